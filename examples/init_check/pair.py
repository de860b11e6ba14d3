"""init_check: a small text CNN whose paddle port keeps paddle's default initializers, where torch's
differ: Embedding N(0, 1) vs XavierUniform, Conv1d kaiming_uniform(a=√5) with a uniform bias vs
Normal(0, √(2/fan_in)) with a zero one, Linear kaiming_uniform(a=√5) with a uniform bias vs
XavierUniform with a zero one. Every other check passes (the harness copies torch's weights into
paddle), yet the port trains differently from scratch: the init check says so, parameter by
parameter, with the paddle initializer that would match. matched.py sets them equal.
"""

import math

import numpy as np
import paddle
import torch

VOCAB, DIM, HIDDEN, CLASSES, KERNEL = 1000, 64, 128, 4, 3


class TorchTextCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, DIM)
        self.conv = torch.nn.Conv1d(DIM, DIM, KERNEL, padding=1)
        self.hidden = torch.nn.Linear(DIM, HIDDEN)
        self.norm = torch.nn.LayerNorm(HIDDEN)
        self.classifier = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, ids):
        x = torch.relu(self.conv(self.embed(ids).transpose(1, 2))).mean(2)
        return self.classifier(self.norm(torch.relu(self.hidden(x))))


class PaddleTextCNN(paddle.nn.Layer):
    def __init__(self, init=None):
        """init: layer kind -> (weight initializer, bias initializer) made for a fan_in; None: paddle's defaults."""
        super().__init__()
        init = init or {}

        def attrs(kind, fan_in):
            if kind not in init:
                return {}
            weight, bias = init[kind](fan_in)
            return {"weight_attr": paddle.ParamAttr(initializer=weight),
                    **({"bias_attr": paddle.ParamAttr(initializer=bias)} if bias is not None else {})}

        self.embed = paddle.nn.Embedding(VOCAB, DIM, **attrs("embedding", DIM))
        self.conv = paddle.nn.Conv1D(DIM, DIM, KERNEL, padding=1, **attrs("conv", DIM * KERNEL))
        self.hidden = paddle.nn.Linear(DIM, HIDDEN, **attrs("linear", DIM))
        self.norm = paddle.nn.LayerNorm(HIDDEN)
        self.classifier = paddle.nn.Linear(HIDDEN, CLASSES, **attrs("linear", HIDDEN))

    def forward(self, ids):
        x = paddle.nn.functional.relu(self.conv(self.embed(ids).transpose([0, 2, 1]))).mean(2)
        return self.classifier(self.norm(paddle.nn.functional.relu(self.hidden(x))))


def build_torch():
    return TorchTextCNN()


def build_paddle():
    return PaddleTextCNN()  # paddle's defaults: what a port gets when it sets nothing


def make_batch(rng: np.random.Generator, step: int) -> dict:
    ids = rng.integers(0, VOCAB, size=(8, 16))
    return {"ids": ids, "label": (ids[:, 0] % CLASSES).astype(np.int64)}


def torch_like(fan_in):
    """torch's Linear/Conv default in paddle: kaiming_uniform(a=√5) weight, uniform ±1/√fan_in bias."""
    bound = 1 / math.sqrt(fan_in)
    return (paddle.nn.initializer.KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu"),
            paddle.nn.initializer.Uniform(-bound, bound))
