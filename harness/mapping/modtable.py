"""The module tables both workers report, read the same way on both sides: one vocabulary of
module kinds, the conversion rules per kind, and a module's *signature*, the (paddle-side local
name, shape) of every tensor it holds once converted. Two modules can only be a pair when their
kinds and signatures are equal (harness/mapping/pairing.py); the tensors then convert entry by entry
(harness/mapping/weights.py). Each table row is {name, type, params, buffers, ids, dropout, dropout_site}
in definition order."""

from __future__ import annotations

import re

_KIND_ALIASES = {
    "nondynamicallyquantizablelinear": "linear",
    "syncbatchnorm": "batchnorm",
    "simplernn": "rnn",
    "multiheadattention": "mha",
}

RENAMES = {"batchnorm": {"running_mean": "_mean", "running_var": "_variance"}, "prelu": {"weight": "_weight"}}
DROPPED = {"batchnorm": {"num_batches_tracked": "no paddle counterpart"}}
TRANSPOSED = {"linear": {"weight"}}
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


def torch_signature(module: dict) -> tuple:
    """The (paddle local name, shape) pairs a torch module's tensors become: transposed, renamed
    and split by its kind, torch-only tensors left out. Tied tensors count: which of two tied
    modules holds the tensor first is a matter of definition order, not of what they compute."""
    k = kind(module["type"])
    out = []
    for local, shape in tensors(module).items():
        if local in DROPPED.get(k, {}):
            continue
        shape = tuple(shape)
        if k == "mha" and local in FUSED_QKV:
            part = (shape[0] // 3, *shape[1:]) if shape and shape[0] % 3 == 0 else shape
            out += [(f"{child}.{FUSED_QKV[local]}", tuple(reversed(part)) if len(shape) == 2 else part)
                    for child in MHA_CHILDREN]
        elif k == "mha" and local in SEPARATE_QKV:
            out.append((SEPARATE_QKV[local], tuple(reversed(shape))))
        else:
            transposed = local in TRANSPOSED.get(k, set()) and len(shape) == 2
            out.append((RENAMES.get(k, {}).get(local, local), tuple(reversed(shape)) if transposed else shape))
    return tuple(sorted(out))


def paddle_signature(module: dict, by_name: dict) -> tuple:
    """A paddle module's (local name, shape) pairs, aliases included (as for torch's tied ones);
    an attention module counts its q/k/v projections as its own, since torch fuses them."""
    out = [(local, tuple(s)) for local, s in tensors(module).items()]
    if kind(module["type"]) == "mha":
        for child in MHA_CHILDREN:
            row = by_name.get(full_name(module["name"], child))
            out += [(f"{child}.{local}", tuple(s)) for local, s in tensors(row).items()] if row else []
    return tuple(sorted(out))


def describe(module: dict) -> str:
    """'name' (Type: weight [2, 3], bias [3]) for messages, in the module's own framework's layout."""
    shapes = ", ".join(f"{local} {list(shape)}" for local, shape in tensors(module).items()) or "no tensors"
    return f"'{module['name']}' ({module['type']}: {shapes})"


def difference(torch_sig: tuple, paddle_sig: tuple) -> str:
    """What keeps two signatures apart, each tensor named once: a tensor only one side has, or
    shapes that differ once torch's is laid out as paddle's."""
    t, p = dict(torch_sig), dict(paddle_sig)
    parts = [f"torch has {k} {list(t[k])} that paddle lacks" for k in t if k not in p]
    parts += [f"paddle has {k} {list(p[k])} that torch lacks" for k in p if k not in t]
    parts += [f"{k} is {list(t[k])} from torch{' (in paddle layout)' if len(t[k]) > 1 else ''} but {list(p[k])} in paddle"
              for k in t if k in p and t[k] != p[k]]
    return "; ".join(parts) or "same tensors"
