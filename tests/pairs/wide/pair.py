"""Tensors above the shared-memory threshold (1 MiB) in every direction: an embedding of 2 MiB,
a 1 MiB Linear weight, activations of 1 MiB, so weights, gradients, parameters, outputs, traces
and checkpoints all travel through shared memory."""
import numpy as np

VOCAB, D, HIDDEN, CLASSES, SEQ, BATCH = 2048, 256, 1024, 4, 128, 8


def build_torch():
    import torch.nn as nn

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            self.norm = nn.LayerNorm(D)
            self.up = nn.Linear(D, HIDDEN)
            self.act = nn.ReLU()
            self.head = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.head(self.act(self.up(self.norm(self.embed(x)).mean(1))))

    return Wide()


def build_paddle():
    import paddle.nn as nn

    class Wide(nn.Layer):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D)
            self.norm = nn.LayerNorm(D)
            self.up = nn.Linear(D, HIDDEN)
            self.act = nn.ReLU()
            self.head = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            return self.head(self.act(self.up(self.norm(self.embed(x)).mean(1))))

    return Wide()


def make_batch(rng, step):
    return {"x": rng.integers(0, VOCAB, (BATCH, SEQ)).astype("int64"),
            "label": rng.integers(0, CLASSES, (BATCH,)).astype("int64")}
