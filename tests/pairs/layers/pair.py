"""layers: Conv1d, ConvTranspose1d, BatchNorm1d, PReLU, LSTM (bidirectional), GRU, GroupNorm and a
Linear head, with attribute names that differ on the two sides: weights are paired by module type
and shapes, and the RNN gate order is checked by the forward outputs themselves."""

import numpy as np
import paddle
import torch


class TorchLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 8, 3, padding=1)
        self.deconv = torch.nn.ConvTranspose1d(8, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(8)
        self.prelu = torch.nn.PReLU(8)
        self.lstm = torch.nn.LSTM(8, 12, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(24, 10, batch_first=True)
        self.gn = torch.nn.GroupNorm(2, 10)
        self.head = torch.nn.Linear(10, 10)  # square on purpose

    def forward(self, x):
        h = self.prelu(self.bn(self.deconv(self.conv(x))))
        seq, _ = self.lstm(h.transpose(1, 2))
        out, last = self.gru(seq)
        z = self.gn(out[:, -1].unsqueeze(-1)).squeeze(-1)
        return self.head(z), last


class PaddleLayers(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.c1 = paddle.nn.Conv1D(4, 8, 3, padding=1)
        self.up = paddle.nn.Conv1DTranspose(8, 8, 3, padding=1)
        self.norm = paddle.nn.BatchNorm1D(8)
        self.act = paddle.nn.PReLU(8)
        self.rnn1 = paddle.nn.LSTM(8, 12, direction="bidirect")
        self.rnn2 = paddle.nn.GRU(24, 10)
        self.group = paddle.nn.GroupNorm(2, 10)
        self.fc = paddle.nn.Linear(10, 10)

    def forward(self, x):
        h = self.act(self.norm(self.up(self.c1(x))))
        seq, _ = self.rnn1(h.transpose([0, 2, 1]))
        out, last = self.rnn2(seq)
        z = self.group(out[:, -1].unsqueeze(-1)).squeeze(-1)
        return self.fc(z), last


def build_torch():
    return TorchLayers()


def build_paddle():
    return PaddleLayers()


def make_batch(rng, step):
    return {"x": rng.standard_normal((6, 4, 16), dtype=np.float32),
            "label": rng.integers(0, 10, size=(6,), dtype=np.int64)}
