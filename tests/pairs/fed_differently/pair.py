"""The same small CNN on both sides, but the paddle side's forward_paddle forgets to scale the
pixels to [0, 1] before calling the model: the models are fed different inputs."""

import numpy as np
import paddle
import torch


def build_torch():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3))


def build_paddle():
    return paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.ReLU(), paddle.nn.Flatten(),
                                paddle.nn.Linear(4 * 6 * 6, 3))


def forward_torch(model, batch):
    return model(batch["pixels"] / 255.0)


def forward_paddle(model, batch):
    return model(batch["pixels"])  # the bug: no / 255


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {"pixels": rng.integers(0, 256, size=(2, 3, 8, 8)).astype(np.float32),
            "label": rng.integers(0, 3, size=(2,), dtype=np.int64)}
