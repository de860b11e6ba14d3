"""PyTorch primitives for the shared Runner."""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from backends import base
from backends.masks import channel_shape, counted, shared_dropout
from backends.primitives import Stepper, class_path, dropout_off, dropout_site, identity, no_dropout_p
from backends.torch.optim import build_stepper


class Runner(base.Runner):
    framework = "torch"
    tensor_types = (torch.Tensor,)

    def __init__(self, options: dict):
        super().__init__(options)
        torch.set_num_threads(int(options.get("threads") or 1))
        self.dev = torch.device("cuda" if options.get("device") in ("gpu", "auto") and torch.cuda.is_available() else "cpu")
        # the same switch as use_deterministic_algorithms(True, warn_only=True), which would also
        # import torch._inductor (1.2 s of start-up) for its flag: the worker's environment sets
        # that one (TORCHINDUCTOR_DETERMINISTIC) for a pair that compiles
        torch.set_deterministic_debug_mode("warn")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # TF32 would make a correct port look misaligned at 1e-6 on Ampere and newer cards
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    def version(self) -> str:
        return str(torch.__version__)  # a TorchVersion would make the coordinator import torch to read it

    def device(self) -> str:
        if self.dev.type == "cuda":
            return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
        return f"cpu ({torch.get_num_threads()} threads)"

    def set_threads(self, n: int) -> None:
        torch.set_num_threads(n)

    def seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def model_type(self):
        return torch.nn.Module

    def use_precision(self, precision: str) -> None:
        self.precision = precision

    def to_device(self, model):
        return model.to(self.dev, dtype=torch.float64) if self.precision == "float64" else model.to(self.dev)

    def module_table(self, model) -> list:
        table = []
        for name, mod in model.named_modules():
            params = {k: list(p.shape) for k, p in mod.named_parameters(recurse=False)}
            buffers = {k: list(b.shape) for k, b in mod.named_buffers(recurse=False) if k not in mod._non_persistent_buffers_set}
            # identities reveal tied tensors (one tensor under two names)
            ids = {k: str(id(t)) for k, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]}
            table.append({"name": name, "type": type(mod).__name__, "class": class_path(mod), "params": params,
                          "buffers": buffers, "ids": ids,
                          "dropout": float(getattr(mod, "p", 0.0) or 0.0) if "Dropout" in type(mod).__name__ else 0.0,
                          "dropout_site": dropout_site(mod)})
        return table

    def state_tensors(self, model) -> dict:
        return model.state_dict()

    def load_state(self, model, state: dict) -> None:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"state does not match the torch model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for k, v in own.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise ValueError(f"{k}: torch shape {tuple(v.shape)} vs given {tuple(state[k].shape)}")
        with warnings.catch_warnings():
            # arrays from shared memory are read-only maps: load_state_dict only reads them (it copies)
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True)

    def data_parallel(self, model):
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(os.environ["REPROD_COMM_BACKEND"])  # env://: MASTER_ADDR/PORT, RANK, WORLD_SIZE
        ids = [0] if self.dev.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def read_checkpoint(self, path: str) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code from a file
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        return {k: v.detach().cpu().numpy().copy() for k, v in state.items() if isinstance(v, torch.Tensor)}

    def write_checkpoint(self, model, path: str) -> None:
        torch.save(model.state_dict(), path)

    def set_train(self, model, training: bool) -> None:
        model.train(training)

    def dropout_off(self, model):
        functional = [(F, name, identity) for name in ("dropout", "dropout1d", "dropout2d", "dropout3d",
                                                      "alpha_dropout", "feature_alpha_dropout")]
        # HF attention passes its probability to sdpa as dropout_p (no module to switch off)
        functional.append((F, "scaled_dot_product_attention", no_dropout_p(F.scaled_dot_product_attention)))
        return dropout_off(model.named_modules(), functional)

    def dropout_shared(self, model, masks):
        return shared_dropout(self, model, masks, _shared_functional(masks))

    def allow_backward_in_eval(self, model) -> None:
        pass  # torch backpropagates through every module in eval mode

    def no_grad(self):
        return torch.no_grad()

    def to_tensor(self, array: np.ndarray):
        return torch.from_numpy(np.array(array)).to(self.dev)

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    def backward(self, loss) -> None:
        loss.backward()

    def grad_tensors(self, model) -> dict:
        return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}

    def clear_grads(self, model) -> None:
        for p in model.parameters():
            p.grad = None

    def param_tensors(self, model) -> dict:
        return dict(model.named_parameters())

    def builtin_loss(self, kind: str, output, labels):
        if kind == "cross_entropy":
            # classes on the last axis for (B, C) and (B, T, C) alike, as paddle's axis=-1 does
            return F.cross_entropy(output.reshape(-1, output.shape[-1]), labels.reshape(-1).long())
        if kind == "mse":
            return F.mse_loss(output, labels.reshape(output.shape).to(output.dtype))
        raise ValueError(f"unknown loss kind '{kind}'")

    def argmax(self, output):
        return output.argmax(dim=-1)

    def topk(self, output, k: int):
        return output.reshape(-1, output.shape[-1]).topk(k, dim=-1).indices

    def make_stepper(self, model, cfg: dict, total_steps: int) -> Stepper:
        return build_stepper(model, cfg, total_steps, self.pair_fn("optimizer"), names=self.reference_names)

    def named_modules(self, model) -> list:
        return list(model.named_modules())

    def hook_forward(self, module, pre, post) -> list:
        handles = [module.register_forward_pre_hook(lambda m, args, kwargs: pre(args, kwargs), with_kwargs=True),
                   module.register_forward_hook(lambda m, args, out: post(out))]
        return [h.remove for h in handles]

    def rng_state(self):
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.dev) if self.dev.type == "cuda" else None

    def set_rng_state(self, state) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.dev)

    def default_collate(self):
        from torch.utils.data import default_collate

        return default_collate

    def hook_grad(self, tensor, fn) -> None:
        if tensor.requires_grad:
            tensor.register_hook(lambda g: fn(g) and None)


def _shared_functional(masks) -> list:
    """torch's functional dropouts over shared masks (backends/masks.py); the ones that draw inside
    a kernel are counted there and left to draw their own."""
    def masked(shape_of):
        def dropout(input, p=0.5, training=True, inplace=False):
            if not training or not p:
                return input
            keep = torch.from_numpy(masks.keep(shape_of(input.shape), p, scale=True)).to(input.device, input.dtype)
            return input.mul_(keep) if inplace else input * keep
        return dropout

    out = [(F, "dropout", masked(tuple))]
    out += [(F, f"dropout{n}d", masked(lambda shape, n=n: channel_shape(shape, n + 2))) for n in (1, 2, 3)]
    out += [(F, name, counted(getattr(F, name), masks, 1, 2, training=False))
            for name in ("alpha_dropout", "feature_alpha_dropout")]
    out.append((F, "scaled_dot_product_attention", counted(F.scaled_dot_product_attention, masks, 4)))
    return out
