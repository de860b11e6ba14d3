"""mlp: Linear/ReLU classifier on random features (the smallest pair)."""

import numpy as np
import paddle
import torch

FEATURES, HIDDEN, CLASSES = 32, 64, 10


class TorchMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(FEATURES, HIDDEN)
        self.fc2 = torch.nn.Linear(HIDDEN, HIDDEN)  # square: a missed transpose would still load
        self.head = torch.nn.Linear(HIDDEN, CLASSES)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


class PaddleMLP(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc1 = paddle.nn.Linear(FEATURES, HIDDEN)
        self.fc2 = paddle.nn.Linear(HIDDEN, HIDDEN)
        self.head = paddle.nn.Linear(HIDDEN, CLASSES)
        self.act = paddle.nn.ReLU()

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def build_torch():
    return TorchMLP()


def build_paddle():
    return PaddleMLP()


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {
        "x": rng.standard_normal((16, FEATURES), dtype=np.float32),
        "label": rng.integers(0, CLASSES, size=(16,), dtype=np.int64),
    }
