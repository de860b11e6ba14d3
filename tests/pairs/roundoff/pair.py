"""A correct port whose float32 round-off, amplified by AdamW, exceeds the default 1e-6 within a
few steps (2-layer TransformerEncoder, d 128, lr 1e-3): only float64 arbitration tells it from a
bug. BUG (environment REPROD_TEST_BUG) injects real differences of 10-100x that round-off."""
import os

import numpy as np

VOCAB, D, HEADS, FF, LAYERS, SEQ, BATCH, CLASSES = 200, 128, 4, 256, 2, 16, 8, 3
BUG = os.environ.get("REPROD_TEST_BUG", "")
LR = 1e-3


def build_torch():
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
            self.head = nn.Linear(D, CLASSES)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))

    return Net()


def build_paddle():
    import paddle.nn as nn

    class Net(nn.Layer):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            layer = nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0)
            self.encoder = nn.TransformerEncoder(layer, LAYERS)
            self.head = nn.Linear(D, CLASSES)
            if BUG == "layernorm_eps":  # 1e-5 in torch: a port that typed 1e-4
                for m in self.sublayers():
                    if isinstance(m, nn.LayerNorm):
                        m._epsilon = 1e-4

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))

    return Net()


def optimizer_torch(model, total_steps):
    import torch

    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01), None


def optimizer_paddle(model, total_steps):
    import paddle

    lr = LR * 1.01 if BUG == "lr_one_percent" else LR  # every update 1 % larger
    return paddle.optimizer.AdamW(learning_rate=lr, parameters=model.parameters(), weight_decay=0.01), None


def make_batch(rng, step):
    return {"x": rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int64"),
            "label": rng.integers(0, CLASSES, (BATCH,)).astype("int64")}
