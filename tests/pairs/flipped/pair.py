"""flipped: mlp whose paddle port reverses the class axis."""

import paddle

from backends.zoo.mlp.pair import build_torch, make_batch  # noqa: F401  (the reference side as is)
from backends.zoo.mlp.pair import build_paddle as _build_paddle


def build_paddle():
    return _build_paddle()


def forward_paddle(model, batch):
    return paddle.flip(model(batch["x"]), axis=[-1])
