"""The plain single-framework script a person would write for the harness's default checks:
forward, metric, loss, the lr schedule, `[train] iters` eval-mode steps, then `train_iters`
train-mode steps from the initial weights and the metric on held-out batches. No comparison,
no second framework: what one framework's work costs by itself.

Usage: python benchmarks/plain.py PAIR_TOML torch|paddle
Prints one JSON line: {"framework", "wall_s", "compute_s", "peak_rss_mb"}.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from dataclasses import asdict

import numpy as np

HELDOUT_STEP = 1_000_000  # as the harness's train check


def _pair(cfg):
    spec = importlib.util.spec_from_file_location("plain_pair", cfg.pair)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(cfg.pair.parent))
    spec.loader.exec_module(module)
    return module


def _batches(pair, cfg, steps) -> list:
    return [pair.make_batch(np.random.default_rng([cfg.data.seed, s]), s) for s in steps]


class Torch:
    def __init__(self, pair, cfg):
        import torch

        self.torch, self.pair, self.cfg = torch, pair, cfg

    def build(self):
        self.torch.manual_seed(self.cfg.data.seed)
        return self.pair.build_torch()

    def forward(self, model, batch):
        t = {k: self.torch.from_numpy(v) for k, v in batch.items()}
        fn = getattr(self.pair, "forward_torch", None)
        out = fn(model, t) if fn else model(*[t[k] for k in self.cfg.data.inputs])
        return out, t

    def loss(self, out, t):
        return self.torch.nn.functional.cross_entropy(out, t[self.cfg.data.labels[0]])

    def no_grad(self):
        return self.torch.no_grad()

    def stepper(self, model, total):
        from backends.torch.optim import build_stepper

        return build_stepper(model, _wire(self.cfg), total)

    def train_mode(self, model, on: bool):
        model.train(on)


class Paddle(Torch):
    def __init__(self, pair, cfg):
        import paddle

        self.paddle, self.pair, self.cfg = paddle, pair, cfg

    def build(self):
        self.paddle.seed(self.cfg.data.seed)
        return self.pair.build_paddle()

    def forward(self, model, batch):
        t = {k: self.paddle.to_tensor(v) for k, v in batch.items()}
        fn = getattr(self.pair, "forward_paddle", None)
        out = fn(model, t) if fn else model(*[t[k] for k in self.cfg.data.inputs])
        return out, t

    def loss(self, out, t):
        return self.paddle.nn.functional.cross_entropy(out, t[self.cfg.data.labels[0]])

    def no_grad(self):
        return self.paddle.no_grad()

    def stepper(self, model, total):
        from backends.paddle.optim import build_stepper

        return build_stepper(model, _wire(self.cfg), total)

    def train_mode(self, model, on: bool):
        model.train() if on else model.eval()


def _wire(cfg) -> dict:
    return {"optimizer": asdict(cfg.optimizer), "lr_scheduler": asdict(cfg.lr_scheduler)}


def _train(fw, batches, training: bool, total: int):
    model = fw.build()  # from the initial weights again, as the harness restores them
    fw.train_mode(model, training)
    stepper = fw.stepper(model, total)
    for batch in batches:
        out, t = fw.forward(model, batch)
        loss = fw.loss(out, t)
        loss.backward()
        stepper.step(float(loss))
        stepper.zero_grad()
    return model


def main() -> None:
    from harness.config import parse

    cfg = parse.load(sys.argv[1])
    pair = _pair(cfg)
    start = time.perf_counter()
    fw = (Torch if sys.argv[2] == "torch" else Paddle)(pair, cfg)
    compute = time.perf_counter()
    model = fw.build()
    fw.train_mode(model, False)
    with fw.no_grad():
        for batch in _batches(pair, cfg, [0, *range(cfg.data.eval_batches), 0]):  # forward, metric, loss
            fw.forward(model, batch)
    fw.stepper(model, cfg.total_steps)  # the lr check builds the schedule
    del model
    _train(fw, _batches(pair, cfg, range(cfg.train.iters)), False, cfg.total_steps)
    model = _train(fw, _batches(pair, cfg, range(cfg.train.train_iters)), True,
                   cfg.lr_scheduler.total_steps or cfg.train.train_iters)
    fw.train_mode(model, False)
    with fw.no_grad():
        for batch in _batches(pair, cfg, range(HELDOUT_STEP, HELDOUT_STEP + cfg.data.eval_batches)):
            fw.forward(model, batch)
    end = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"framework": sys.argv[2], "wall_s": round(end - start, 2), "compute_s": round(end - compute, 2),
                      "peak_rss_mb": round(peak)}))


if __name__ == "__main__":
    main()
