"""AlexNet as the guide's AlexNet-Prod writes it (features, adaptive average pool, flatten, a
classifier of Dropout/Linear/ReLU), at a small size; the paddle port moves the classifier's first
ReLU from after its first Linear to before it (where its input is never negative, so it does
nothing). Every module has its counterpart: only their order differs."""

import numpy as np
import paddle
import torch

CLASSES, WIDTH = 10, 64


class AlexNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, kernel_size=5, stride=2, padding=2), torch.nn.ReLU(inplace=True),
            torch.nn.MaxPool2d(kernel_size=3, stride=2),
            torch.nn.Conv2d(16, 32, kernel_size=3, padding=1), torch.nn.ReLU(inplace=True),
            torch.nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = torch.nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=0.5), torch.nn.Linear(32 * 2 * 2, WIDTH), torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(p=0.5), torch.nn.Linear(WIDTH, WIDTH), torch.nn.ReLU(inplace=True),
            torch.nn.Linear(WIDTH, CLASSES))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class AlexNetPort(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.features = paddle.nn.Sequential(
            paddle.nn.Conv2D(3, 16, kernel_size=5, stride=2, padding=2), paddle.nn.ReLU(),
            paddle.nn.MaxPool2D(kernel_size=3, stride=2),
            paddle.nn.Conv2D(16, 32, kernel_size=3, padding=1), paddle.nn.ReLU(),
            paddle.nn.MaxPool2D(kernel_size=3, stride=2))
        self.avgpool = paddle.nn.AdaptiveAvgPool2D((2, 2))
        self.classifier = paddle.nn.Sequential(
            paddle.nn.Dropout(p=0.5), paddle.nn.ReLU(),  # the bug: the ReLU after the first Linear moved here
            paddle.nn.Linear(32 * 2 * 2, WIDTH),
            paddle.nn.Dropout(p=0.5), paddle.nn.Linear(WIDTH, WIDTH), paddle.nn.ReLU(),
            paddle.nn.Linear(WIDTH, CLASSES))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = paddle.flatten(x, 1)
        return self.classifier(x)


def build_torch():
    return AlexNet()


def build_paddle():
    return AlexNetPort()


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {"x": rng.standard_normal((4, 3, 32, 32), dtype=np.float32),
            "label": rng.integers(0, CLASSES, size=(4,), dtype=np.int64)}
