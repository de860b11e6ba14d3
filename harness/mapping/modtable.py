"""The module tables both workers report, read the same way on both sides, and a module's
*signature*: the (local name, shape) of every tensor it holds, in one vocabulary for both
frameworks. Two modules can only be a pair when their signatures are equal
(harness/mapping/pairing.py); the tensors then convert entry by entry (harness/mapping/weights.py).

A signature says what a module holds, never what its class is called: tensor names in one
vocabulary (paddle's BatchNorm `_mean` is torch's `running_mean`), a 2-D tensor's shape in either
layout (torch's Linear is [out, in], paddle's [in, out], PaConvert's `paddle.compat.nn.Linear` and
PaddleFormers' `lm_head` [out, in]: which one a pair has is decided per tensor by its shape, or by
measurement where it is square), and torch's fused attention projection (`in_proj_weight`) seen
as the three q/k/v projections paddle's attention holds in children. Class names serve only the
type rule for a square weight no forward measured, and messages. Each table row is {name, type,
class, params, buffers, ids, dropout, dropout_site} in definition order."""

from __future__ import annotations

import re

_KIND_ALIASES = {
    "nondynamicallyquantizablelinear": "linear",
    "syncbatchnorm": "batchnorm",
    "simplernn": "rnn",
    "multiheadattention": "mha",
}

# paddle's names for tensors torch names otherwise (BatchNorm's statistics, PReLU's weight)
PADDLE_NAMES = {"_mean": "running_mean", "_variance": "running_var", "_weight": "weight"}
TORCH_ONLY = {"num_batches_tracked": "no paddle counterpart"}
FUSED_QKV = {"in_proj_weight": "weight", "in_proj_bias": "bias"}
SEPARATE_QKV = {"q_proj_weight": "q_proj.weight", "k_proj_weight": "k_proj.weight", "v_proj_weight": "v_proj.weight"}
MHA_CHILDREN = ("q_proj", "k_proj", "v_proj")


def kind(module_type: str) -> str:
    """torch and paddle class names to one vocabulary: Conv2d/Conv2D -> conv2d, BatchNorm2D -> batchnorm,
    ConvTranspose2d/Conv2DTranspose -> convtranspose2d."""
    t = module_type.lower()
    if t in _KIND_ALIASES:
        return _KIND_ALIASES[t]
    m = re.fullmatch(r"conv(\d)dtranspose", t)
    if m:
        return f"convtranspose{m.group(1)}d"
    if t.startswith(("batchnorm", "instancenorm")):
        return re.sub(r"\d.*$", "", t)
    return t


def full_name(module: str, local: str) -> str:
    """A tensor's structured name from its module's and its own."""
    return f"{module}.{local}" if module else local


def module_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else ""


def tensors(module: dict) -> dict:
    return {**module["params"], **module["buffers"]}


def either_layout(shape) -> tuple:
    """A shape as a signature holds it: a 2-D tensor fits in torch's layout or transposed."""
    shape = tuple(shape)
    return tuple(sorted(shape)) if len(shape) == 2 else shape


def fused(module: dict) -> bool:
    """torch's attention with its q/k/v projections in one tensor (or in three of its own)."""
    return any(local in FUSED_QKV or local in SEPARATE_QKV for local in tensors(module))


def torch_signature(module: dict) -> tuple:
    """The tensors a torch module holds, torch-only ones left out. Tied tensors count: which of
    two tied modules holds the tensor first is a matter of definition order, not of what they compute."""
    return tuple(sorted((local, either_layout(s)) for local, s in tensors(module).items() if local not in TORCH_ONLY))


def fused_signature(module: dict) -> tuple | None:
    """A fused torch attention's tensors as paddle's attention holds them: split into q/k/v children."""
    if not fused(module):
        return None
    out = []
    for local, shape in tensors(module).items():
        if local in FUSED_QKV:
            part = (shape[0] // 3, *shape[1:]) if shape and shape[0] % 3 == 0 else tuple(shape)
            out += [(f"{child}.{FUSED_QKV[local]}", either_layout(part)) for child in MHA_CHILDREN]
        elif local in SEPARATE_QKV:
            out.append((SEPARATE_QKV[local], either_layout(shape)))
        elif local not in TORCH_ONLY:
            out.append((local, either_layout(shape)))
    return tuple(sorted(out))


def paddle_signature(module: dict) -> tuple:
    """A paddle module's tensors under torch's names, aliases included (as for torch's tied ones)."""
    return tuple(sorted((PADDLE_NAMES.get(local, local), either_layout(s)) for local, s in tensors(module).items()
                        if local not in TORCH_ONLY))


def container_signature(module: dict, by_name: dict) -> tuple | None:
    """A paddle module holding no tensor itself but q/k/v projections in children, seen as one
    attention: what a fused torch attention pairs with."""
    if tensors(module):
        return None
    rows = [by_name.get(full_name(module["name"], child)) for child in MHA_CHILDREN]
    if not all(row and tensors(row) for row in rows):
        return None
    return tuple(sorted((f"{child}.{local}", either_layout(s))
                        for child, row in zip(MHA_CHILDREN, rows) for local, s in tensors(row).items()))


def paddle_local(torch_local: str, paddle_module: dict) -> str | None:
    """The paddle tensor of a paired module that a torch tensor fills: the same name or paddle's own."""
    held = tensors(paddle_module)
    if torch_local in held:
        return torch_local
    return next((p for p, t in PADDLE_NAMES.items() if t == torch_local and p in held), None)


def describe(module: dict) -> str:
    """'name' (Type: weight [2, 3], bias [3]) for messages, in the module's own framework's layout."""
    shapes = ", ".join(f"{local} {list(shape)}" for local, shape in tensors(module).items()) or "no tensors"
    return f"'{module['name']}' ({module['type']}: {shapes})"


def _shape(shape: tuple) -> str:
    return f"{list(shape)}{' (either layout)' if len(shape) == 2 else ''}"


def difference(torch_sig: tuple, paddle_sig: tuple) -> str:
    """What keeps two signatures apart, each tensor named once: a tensor only one side has, or
    shapes that differ in either layout."""
    t, p = dict(torch_sig), dict(paddle_sig)
    parts = [f"torch has {k} {_shape(t[k])} that paddle lacks" for k in t if k not in p]
    parts += [f"paddle has {k} {_shape(p[k])} that torch lacks" for k in p if k not in t]
    parts += [f"{k} is {_shape(t[k])} from torch but {list(p[k])} in paddle" for k in t if k in p and t[k] != p[k]]
    return "; ".join(parts) or "same tensors"
