"""todays_libs: a small MLP whose torch side takes its activation from transformers 5 and whose paddle
side takes it from PaddleFormers; the two cannot share one environment (README: one environment per
framework), so this pair runs only with --torch-python and --paddle-python."""

import numpy as np
import paddle
import torch


def build_torch():
    import transformers
    from transformers.activations import ACT2FN

    if not transformers.__version__.startswith("5."):
        raise RuntimeError(f"transformers {transformers.__version__} in {transformers.__file__}: this pair needs 5.x")
    return torch.nn.Sequential(torch.nn.Linear(8, 16), ACT2FN["silu"], torch.nn.Linear(16, 3))


def build_paddle():
    from paddleformers.transformers.activations import ACT2FN

    return paddle.nn.Sequential(paddle.nn.Linear(8, 16), ACT2FN["silu"], paddle.nn.Linear(16, 3))


def make_batch(rng: np.random.Generator, step: int) -> dict:
    return {"x": rng.standard_normal((4, 8), dtype=np.float32), "label": rng.integers(0, 3, size=(4,), dtype=np.int64)}
