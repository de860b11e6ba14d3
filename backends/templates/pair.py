"""A starter pair: replace the two models with your PyTorch reference and your Paddle port.

Each side's functions run only in their own framework's process (the other framework is a
stand-in there), and make_batch runs in the coordinator, which has neither: it must return numpy.
"""

import numpy as np
import paddle
import torch

FEATURES, CLASSES = 16, 4


def build_torch():
    # Your reference model. The harness copies its initial weights into the paddle model.
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 32), torch.nn.GELU(), torch.nn.Linear(32, CLASSES))


def build_paddle():
    # Your port: same structure. Linear weights are transposed for you ([out, in] -> [in, out]).
    return paddle.nn.Sequential(paddle.nn.Linear(FEATURES, 32), paddle.nn.GELU(), paddle.nn.Linear(32, CLASSES))


def make_batch(rng: np.random.Generator, step: int) -> dict:
    # Called once per step with a generator seeded from (seed, step); both sides get these arrays.
    x = rng.standard_normal((8, FEATURES), dtype=np.float32)
    return {"x": x, "label": (x[:, :CLASSES].argmax(axis=1)).astype(np.int64)}


# Your own data (guide Step 2; optional, and then make_batch is too): each side's pipeline as your code
# already builds it, for split "train" or "eval": a DataLoader, a map-style dataset or any iterable of
# batches (dicts, tuples or arrays). The data check compares them; [data] source = "torch" runs every
# other check on torch's batches (the metric over the whole eval split); [train] epochs = N makes the
# train check a training run of both sides on them (guide Step 5; examples/digits).
# def data_torch(split):
#     return torch.utils.data.DataLoader(MyTorchDataset(split), batch_size=8, collate_fn=my_collate)
# def data_paddle(split):
#     return paddle.io.DataLoader(MyPaddleDataset(split), batch_size=8, collate_fn=my_batchify)

# Optional (see README): forward_torch/forward_paddle(model, batch), loss_torch/loss_paddle(output, batch),
# metric_torch/metric_paddle(output, batch) -> dict, optimizer_torch/optimizer_paddle(model, total_steps)
# -> (optimizer, scheduler or None), torch_to_paddle(state) -> state.
