"""PaddlePaddle primitives for the shared Runner."""

from __future__ import annotations

import contextlib
import io
import signal
import sys

import numpy as np
import paddle
import paddle.nn.functional as F

from backends import base
from backends.masks import counted, shared_dropout
from backends.paddle.optim import build_stepper
from backends.primitives import Stepper, class_path, dropout_off, dropout_site, identity, no_dropout_p
from harness.safety.safeload import load_pdparams


class Runner(base.Runner):
    framework = "paddle"
    tensor_types = (paddle.Tensor,)

    def __init__(self, options: dict):
        super().__init__(options)
        # paddle's C++ handler prints a "FatalError: Termination signal" report when the
        # coordinator stops this worker on purpose (Ctrl-C, a sibling's failure): plain exit instead
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        use_gpu = options.get("device") in ("gpu", "auto") and paddle.device.cuda.device_count() > 0
        paddle.set_device("gpu" if use_gpu else "cpu")

    def version(self) -> str:
        return paddle.__version__

    def device(self) -> str:
        return paddle.device.get_device()

    def set_threads(self, n: int) -> None:
        paddle.base.core.set_num_threads(n)  # the CPU kernels' pool (MKL, oneDNN); read at each kernel

    def seed_all(self, seed: int) -> None:
        paddle.seed(seed)

    def model_type(self):
        return paddle.nn.Layer

    def use_precision(self, precision: str) -> None:
        self.precision = precision
        paddle.set_default_dtype(precision)  # paddle builds parameters in the default dtype

    def to_device(self, model):
        return model  # paddle builds on the device set at start-up, in the default dtype

    def module_table(self, model) -> list:
        table = []
        for name, layer in model.named_sublayers(include_self=True):
            params = {k: list(p.shape) for k, p in layer.named_parameters(include_sublayers=False)}
            buffers = {
                k: list(b.shape)
                for k, b in layer.named_buffers(include_sublayers=False)
                if b.persistable
            }
            # paddle's RNN cells hold the same tensors as the RNN layer itself: identities reveal that
            ids = {k: t.name for k, t in [*layer.named_parameters(include_sublayers=False),
                                         *layer.named_buffers(include_sublayers=False)]}
            table.append({"name": name, "type": type(layer).__name__, "class": class_path(layer), "params": params,
                          "buffers": buffers, "ids": ids,
                          "dropout": float(getattr(layer, "p", 0.0) or 0.0) if "Dropout" in type(layer).__name__ else 0.0,
                          "dropout_site": dropout_site(layer)})
        return table

    def state_tensors(self, model) -> dict:
        return model.state_dict()

    def load_state(self, model, state: dict) -> None:
        # set_state_dict only warns on a mismatch; a port must fail loudly instead
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(
                f"weights do not fill the paddle model: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
            )
        for k, v in own.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise ValueError(f"{k}: paddle shape {tuple(v.shape)} vs converted {tuple(state[k].shape)}")
            if np.dtype(state[k].dtype) != np.dtype(paddle_dtype_name(v.dtype)):
                state[k] = np.asarray(state[k]).astype(paddle_dtype_name(v.dtype))
        model.set_state_dict({k: np.asarray(state[k]) for k in own})

    def data_parallel(self, model):
        import paddle.distributed as dist

        if not dist.is_initialized():
            # every rank prints its "Modified FLAGS detected" table here, over the coordinator's progress
            captured = io.StringIO()
            try:
                with contextlib.redirect_stderr(captured):
                    dist.init_parallel_env()  # PADDLE_TRAINER_* set by the coordinator, as paddle.distributed.launch does
            finally:
                sys.stderr.write("".join(line for line in captured.getvalue().splitlines(keepends=True)
                                         if not line.startswith(("FLAGS(name=", "=====")) and line.strip()))
        return paddle.DataParallel(model)

    def read_checkpoint(self, path: str) -> dict:
        return load_pdparams(path)  # never paddle.load: a pickle may run code while it loads

    def write_checkpoint(self, model, path: str) -> None:
        paddle.save(model.state_dict(), path)

    def set_train(self, model, training: bool) -> None:
        model.train() if training else model.eval()

    def dropout_off(self, model):
        # MultiHeadAttention applies its float `dropout` with F.dropout on the attention weights
        functional = [(F, name, identity) for name in ("dropout", "dropout2d", "dropout3d", "alpha_dropout")]
        if hasattr(F, "scaled_dot_product_attention"):
            functional.append((F, "scaled_dot_product_attention", no_dropout_p(F.scaled_dot_product_attention)))
        return dropout_off(model.named_sublayers(include_self=True), functional)

    def dropout_shared(self, model, masks):
        return shared_dropout(self, model, masks, _shared_functional(masks))

    def allow_backward_in_eval(self, model) -> None:
        # paddle's RNN kernels keep no reserve space in eval mode, so backward fails there
        # ("Tensor holds no memory", paddle 3.3). Without inter-layer dropout train mode computes
        # the same thing, so such RNNs train in train mode; with dropout that would differ: say so.
        for name, layer in model.named_sublayers(include_self=True):
            if isinstance(layer, paddle.nn.layer.rnn.RNNBase):
                if getattr(layer, "dropout", 0.0):
                    raise ValueError(f"paddle RNN '{name}' has dropout {layer.dropout}: paddle cannot backprop an RNN in "
                                     "eval mode, and train mode would drop out; set its dropout to 0 for the backward check")
                layer.train()

    def no_grad(self):
        return paddle.no_grad()

    def to_tensor(self, array: np.ndarray):
        return paddle.to_tensor(np.asarray(array))

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.detach().numpy()  # a copy already

    def backward(self, loss) -> None:
        loss.backward()

    def grad_tensors(self, model) -> dict:
        return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    def clear_grads(self, model) -> None:
        model.clear_gradients(set_to_zero=False)

    def param_tensors(self, model) -> dict:
        # paddle keeps BatchNorm statistics as (non-trainable) parameters; torch calls them buffers
        return {k: p for k, p in model.named_parameters() if not p.stop_gradient}

    def builtin_loss(self, kind: str, output, labels):
        if kind == "cross_entropy":
            return F.cross_entropy(output.reshape([-1, output.shape[-1]]), labels.reshape([-1]).astype("int64"))
        if kind == "mse":
            return F.mse_loss(output, labels.reshape(output.shape).astype(output.dtype))
        raise ValueError(f"unknown loss kind '{kind}'")

    def argmax(self, output):
        return output.argmax(axis=-1)

    def topk(self, output, k: int):
        return paddle.topk(output.reshape([-1, output.shape[-1]]), k, axis=-1)[1]

    def make_stepper(self, model, cfg: dict, total_steps: int) -> Stepper:
        return build_stepper(model, cfg, total_steps, self.pair_fn("optimizer"), names=self.reference_names)

    def named_modules(self, model) -> list:
        return list(model.named_sublayers(include_self=True))

    def hook_forward(self, module, pre, post) -> list:
        handles = [module.register_forward_pre_hook(lambda layer, args, kwargs: pre(args, kwargs) and None,
                                                    with_kwargs=True),
                   module.register_forward_post_hook(lambda layer, inputs, out: post(out) and None)]
        return [h.remove for h in handles]

    def rng_state(self):
        return paddle.get_rng_state()

    def set_rng_state(self, state) -> None:
        paddle.set_rng_state(state)

    def default_collate(self):
        from paddle.io.dataloader.collate import default_collate_fn

        return default_collate_fn

    def hook_grad(self, tensor, fn) -> None:
        if not tensor.stop_gradient:
            tensor.register_hook(lambda g: fn(g) and None)


def paddle_dtype_name(dtype) -> str:
    return str(dtype).replace("paddle.", "")



def _shared_functional(masks) -> list:
    """paddle's functional dropouts over shared masks (backends/masks.py), each with its mode; the
    ones that draw inside a kernel are counted there and left to draw their own."""
    def apply(x, shape, p, scale):
        keep = paddle.to_tensor(masks.keep(shape, p, scale=scale), dtype=x.dtype, place=x.place)
        return x * keep

    def dropout(x=None, p=0.5, axis=None, training=True, inplace=False, mode="upscale_in_train", name=None, input=None):
        x = input if x is None else x
        if not training or not p:
            return paddle.scale(x, 1.0 - p) if not training and p and mode == "downscale_in_infer" else x
        axes = None if axis is None else {a % x.ndim for a in ([axis] if isinstance(axis, int) else axis)}
        shape = x.shape if axes is None else [d if i in axes else 1 for i, d in enumerate(x.shape)]
        return apply(x, shape, p, mode == "upscale_in_train")

    def channels(channel_last_format: str):
        def dropout_nd(x, p=0.5, training=True, data_format=None, name=None):
            if not training or not p:
                return x
            last = data_format == channel_last_format
            shape = [d if i == 0 or i == (x.ndim - 1 if last else 1) else 1 for i, d in enumerate(x.shape)]
            return apply(x, shape, p, True)
        return dropout_nd

    out = [(F, "dropout", dropout), (F, "dropout2d", channels("NHWC")), (F, "dropout3d", channels("NDHWC")),
           (F, "alpha_dropout", counted(F.alpha_dropout, masks, 1, 2))]
    if hasattr(F, "scaled_dot_product_attention"):
        out.append((F, "scaled_dot_product_attention", counted(F.scaled_dot_product_attention, masks, 4, 6)))
    return out
