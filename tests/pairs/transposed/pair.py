"""transposed: the cnn pair whose paddle port multiplies by its head weight transposed, as if it were
torch's [out, in] layout: a missing-transpose bug that fails every check after forward."""

import numpy as np
import paddle
import torch

CLASSES = 16  # square head: the untransposed weight still fits


class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(16)
        self.pool = torch.nn.MaxPool2d(2)
        self.gap = torch.nn.AdaptiveAvgPool2d(1)
        self.head = torch.nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.gap(torch.relu(self.bn2(self.conv2(x))))
        return self.head(torch.flatten(x, 1))


class PaddleCNN(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
        self.bn1 = paddle.nn.BatchNorm2D(8)  # paddle momentum 0.9 == torch momentum 0.1
        self.conv2 = paddle.nn.Conv2D(8, 16, 3, padding=1)
        self.bn2 = paddle.nn.BatchNorm2D(16)
        self.pool = paddle.nn.MaxPool2D(2)
        self.gap = paddle.nn.AdaptiveAvgPool2D(1)
        self.head = paddle.nn.Linear(16, CLASSES)

    def forward(self, x):
        x = self.pool(paddle.nn.functional.relu(self.bn1(self.conv1(x))))
        x = self.gap(paddle.nn.functional.relu(self.bn2(self.conv2(x))))
        x = paddle.flatten(x, 1)
        return paddle.matmul(x, self.head.weight.T) + self.head.bias  # the bug: torch layout assumed


def build_torch():
    model = TorchCNN()
    # non-trivial running statistics, so a dropped or swapped BatchNorm buffer shows in eval mode
    gen = torch.Generator().manual_seed(1)
    for bn in (model.bn1, model.bn2):
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
    return model


def build_paddle():
    return PaddleCNN()


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {
        "image": rng.standard_normal((8, 3, 16, 16), dtype=np.float32),
        "label": rng.integers(0, CLASSES, size=(8,), dtype=np.int64),
    }
