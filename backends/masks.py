"""Dropout masks both workers draw alike, for the training run (backends/trainrun.py).

Each framework draws its own dropout masks from its own generator, so two correct runs with
dropout on part from the first step and stay comparable only as two samples of a random process.
Here every dropout call of a training step takes its mask from a numpy generator seeded with the
run seed, the step, the rank and the call's site: the torch name of the Dropout module that made
it (paddle's through the weight plan's dropout pairs), or "functional" with its count in the step
for a dropout called as a function (an attention module's). The mask is drawn flat, by element
count, then shaped: torch's (B*H, T, S) attention weights and paddle's (B, H, T, S) get the same
mask. So the same units drop on both sides wherever the two models call their dropouts alike,
with each side's own probability and mode: a port that drops with another probability drops
other units, and its curves show it.

Dropouts whose mask is drawn inside a kernel (torch's and paddle's scaled_dot_product_attention
with dropout_p > 0, alpha dropout) cannot take a mask: they draw their own and are counted in
`unshared`, which makes the comparison statistical (harness/trainrun/band.py).

Framework-free: each runner supplies its functional replacements over `keep`."""

from __future__ import annotations

import contextlib
import zlib

import numpy as np

FUNCTIONAL = "functional"


class SharedMasks:
    def __init__(self, seed: int, rank: int = 0, sites: dict | None = None):
        self.seed, self.rank = int(seed), int(rank)
        self.sites = dict(sites or {})  # this side's Dropout module name -> its site (the torch name)
        self.step = 0
        self.calls: dict = {}
        self.open: list = []  # the sites of the Dropout modules being called, innermost last
        self.unshared = 0  # dropout draws a kernel made itself, since the last reset

    def begin(self, step: int) -> None:
        self.step, self.calls = int(step), {}

    def keep(self, shape, p: float, scale: bool) -> np.ndarray:
        """1 where a unit is kept (scaled by 1/(1-p) when `scale`, upscale_in_train), else 0, float32."""
        site = self.open[-1] if self.open else FUNCTIONAL
        call = self.calls.get(site, 0)
        self.calls[site] = call + 1
        rng = np.random.default_rng([self.seed, self.step, self.rank, zlib.crc32(site.encode()), call])
        n = int(np.prod(shape, dtype=np.int64))
        kept = rng.random(n, dtype=np.float32) >= np.float32(p)
        out = kept.astype(np.float32)
        if scale and p < 1:
            out *= np.float32(1.0 / (1.0 - p))
        return out.reshape(tuple(int(d) for d in shape))

    def drawn_by_kernel(self) -> None:
        self.unshared += 1


@contextlib.contextmanager
def shared_dropout(runner, model, masks: SharedMasks, functional: list):
    """While the block runs: Dropout modules say their site (hooks), and the framework's functional
    dropouts (`functional`: (namespace, name, replacement)) take their masks from `masks`."""
    removers = []
    for name, module in runner.named_modules(model):
        if "Dropout" in type(module).__name__:
            site = masks.sites.get(name, name)  # not in the plan's dropout pairs: its structured name
            removers += runner.hook_forward(module, lambda args, kwargs, site=site: masks.open.append(site) and None,
                                            lambda output: masks.open.pop() and None)
    saved = [(namespace, name, getattr(namespace, name)) for namespace, name, _ in functional]
    for namespace, name, replacement in functional:
        setattr(namespace, name, replacement)
    try:
        yield masks
    finally:
        for namespace, name, original in reversed(saved):
            setattr(namespace, name, original)
        for remove in removers:
            remove()
        masks.open.clear()


def counted(fn, masks: SharedMasks, p_at: int, training_at: int | None = None, training: bool = True):
    """fn (a kernel that draws its own dropout: attention's dropout_p, alpha dropout) as it is, its
    draws counted: p is argument `p_at` (or named p / dropout_p), training argument `training_at`."""
    def call(*args, **kwargs):
        p = args[p_at] if len(args) > p_at else kwargs.get("p", kwargs.get("dropout_p", 0.0))
        on = args[training_at] if training_at is not None and len(args) > training_at else kwargs.get("training", training)
        if p and on:
            masks.drawn_by_kernel()
        return fn(*args, **kwargs)
    return call


def channel_shape(shape, batched_ndim: int) -> tuple:
    """The mask shape of a channel-wise dropout (dropout1d/2d/3d): one value per sample and channel
    (batched input) or per channel, broadcast over the rest."""
    shape = tuple(int(d) for d in shape)
    lead = 2 if len(shape) == batched_ndim else 1
    return shape[:lead] + (1,) * (len(shape) - lead)
