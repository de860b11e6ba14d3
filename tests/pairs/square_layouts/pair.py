"""square_layouts: every weight of the port is square or [out, in], and no class name matches
torch's: a PaConvert-style paddle.compat.nn.Linear (keeps torch's [out, in]), a paddle.nn.Linear
([in, out]), a custom layer that multiplies by its weight with transpose_y=True (torch's layout,
and torch's weight starts at zero, so its values cannot tell) and a PaddleFormers-style lm_head
([vocab, hidden]). No torch_to_paddle: the weight map pairs by tensors and measures the layouts."""

import numpy as np
import paddle
import torch

VOCAB, HIDDEN, CLASSES = 40, 16, 40


class Reference(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.a = torch.nn.Linear(HIDDEN, HIDDEN)
        self.b = torch.nn.Linear(HIDDEN, HIDDEN)
        self.c = torch.nn.Linear(HIDDEN, HIDDEN, bias=False)
        torch.nn.init.zeros_(self.c.weight)  # a zero-initialised gate: as is and transposed are equal
        self.lm_head = torch.nn.Linear(HIDDEN, CLASSES, bias=False)

    def forward(self, x):
        h = torch.tanh(self.a(self.embed(x)))
        h = h + self.b(h)
        h = h + self.c(h)
        return self.lm_head(h.mean(1))


class TransposedMatmul(paddle.nn.Layer):
    """weight [out, in] like torch's, applied with transpose_y=True."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = self.create_parameter([n_out, n_in])

    def forward(self, x):
        return paddle.matmul(x, self.weight, transpose_y=True)


class Port(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.embed = paddle.nn.Embedding(VOCAB, HIDDEN)
        self.a = paddle.compat.nn.Linear(HIDDEN, HIDDEN)
        self.b = paddle.nn.Linear(HIDDEN, HIDDEN)
        self.c = TransposedMatmul(HIDDEN, HIDDEN)
        self.lm_head = TransposedMatmul(HIDDEN, CLASSES)

    def forward(self, x):
        h = paddle.tanh(self.a(self.embed(x)))
        h = h + self.b(h)
        h = h + self.c(h)
        return self.lm_head(h.mean(1))


def build_torch():
    return Reference()


def build_paddle():
    return Port()


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {"x": rng.integers(0, VOCAB, size=(4, 6)), "label": rng.integers(0, CLASSES, size=(4,))}
