"""The plain single-framework Step 5 script a person would write for a pair with its own data and a
training run ([train] epochs or steps): the pair's model, its own train and eval loaders, its own
optimizer and schedule (optimizer_<side>), its loss (loss_<side>), train mode, and an evaluation
(loss and accuracy over the eval loader) every [train] eval_every steps. No comparison, no second
framework (it is hidden, as in a worker): what one side's training costs by itself.

Usage: python benchmarks/plain_train.py PAIR_TOML torch|paddle [THREADS]
Prints one JSON line: {"framework", "wall_s", "train_s", "steps", "accuracy"}. THREADS: the framework's
CPU threads (default: the framework's own choice).
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _batches(loader, fields: list):
    for batch in loader:
        yield dict(zip(fields, batch)) if isinstance(batch, (list, tuple)) else batch


def _evaluate(side: str, fw, pair, model, fields: list, inputs: list, label: str) -> float:
    model.eval()
    right = total = 0
    with fw.no_grad():
        for batch in _batches(getattr(pair, f"data_{side}")("eval"), fields):
            out = model(*[batch[k] for k in inputs])
            getattr(pair, f"loss_{side}")(out, batch)
            right += int((out.argmax(-1) == batch[label]).sum())
            total += int(batch[label].shape[0])
    model.train()
    return right / total


def main() -> None:
    from harness.config import parse
    from harness.pair import loader, stubs

    cfg = parse.load(sys.argv[1])
    side = sys.argv[2]
    start = time.perf_counter()
    stubs.block(loader.blocked_roots(side), f"plain {side} script")
    fw = __import__(side)
    if len(sys.argv) > 3:
        fw.set_num_threads(int(sys.argv[3])) if side == "torch" else fw.base.core.set_num_threads(int(sys.argv[3]))
    pair = loader.load(cfg.pair, keep=side, where=f"plain {side} script")
    fw.seed(cfg.data.seed) if side == "paddle" else fw.manual_seed(cfg.data.seed)
    fields, inputs, label = list(cfg.data.fields), list(cfg.data.inputs), cfg.data.labels[0]
    model = getattr(pair, f"build_{side}")()
    per_epoch = len(getattr(pair, f"data_{side}")("train"))
    total = cfg.train.steps or cfg.train.epochs * per_epoch
    every = cfg.train.eval_every or per_epoch
    opt, sched = getattr(pair, f"optimizer_{side}")(model, total)
    loss_fn = getattr(pair, f"loss_{side}")
    trained = time.perf_counter()
    model.train()
    step, accuracy = 0, float("nan")
    while step < total:
        for batch in _batches(getattr(pair, f"data_{side}")("train"), fields):
            loss = loss_fn(model(*[batch[k] for k in inputs]), batch)
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad() if side == "torch" else opt.clear_grad()
            step += 1
            if step % every == 0 or step == total:
                accuracy = _evaluate(side, fw, pair, model, fields, inputs, label)
            if step == total:
                break
    end = time.perf_counter()
    print(json.dumps({"framework": side, "wall_s": round(end - start, 2), "train_s": round(end - trained, 2),
                      "steps": step, "accuracy": round(float(np.float64(accuracy)), 4)}))


if __name__ == "__main__":
    main()
