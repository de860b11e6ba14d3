"""How small an optimizer difference the backward check catches, and how often a correct port
needs float64 to be called aligned, printed from one run.

Parameters are judged by their update (harness/verdict/updates.py): the smallest difference
caught is measured by scaling the paddle side's learning rate by (1 + e), which changes every
update by e relative, for each e given; a correct port is run over seeds (the data, the
frameworks' seeds and so the initial weights change) and must be aligned every time. Each
verdict is the run's: float32, then float64 arbitration when float32 fails.

Pairs: `alexnet` is tests/pairs/alexnet (the guide's Step 4: momentum 0.9, lr 0.00125, weight
decay 1e-4) at full AlexNet size (--size full: 61M parameters, 224 x 224 images) or the test's;
`bert` is HF vs PaddleNLP BERT with bert-base's width and 2 layers (--size full), or the
example's small config, AdamW lr 5e-5, decay 0.01, no_decay bias and LayerNorm.weight.

Usage: python benchmarks/bench_sensitivity.py alexnet|bert [--size full|test] [--seeds 5]
       [--scales 1e-3,3e-4,1e-4,5e-5]
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
import time
from dataclasses import replace
from pathlib import Path

from harness.checks import training
from harness.config import parse
from harness.session import RunOptions, Session
from harness.verdict import rules

ROOT = Path(__file__).resolve().parents[1]

ALEXNET = '''
import importlib.util
spec = importlib.util.spec_from_file_location("alexnet_base", {base!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)
if {full}:
    base.C1, base.C2, base.C3, base.C4, base.HIDDEN, base.IMAGE, base.CLASSES = 64, 192, 384, 256, 4096, 224, 1000
build_torch, build_paddle, make_batch, optimizer_torch = base.build_torch, base.build_paddle, base.make_batch, \\
    base.optimizer_torch


def optimizer_paddle(model, total_steps):
    import paddle

    schedule = paddle.optimizer.lr.StepDecay(base.LR * (1 + {scale!r}), step_size=base.STEP_SIZE, gamma=base.GAMMA)
    return paddle.optimizer.Momentum(learning_rate=schedule, momentum=base.MOMENTUM, parameters=model.parameters(),
                                     weight_decay=base.WEIGHT_DECAY), schedule
'''
ALEXNET_TOML = '[data]\ninputs = ["image"]\nbatch_size = 4\n[train]\niters = 5\n'

BERT = '''
import importlib.util
spec = importlib.util.spec_from_file_location("bert_example", {base!r})
base = importlib.util.module_from_spec(spec)
spec.loader.exec_module(base)
if {full}:
    base.CONFIG.update(vocab_size=30522, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                       max_position_embeddings=512)
    base.SEQ = 128
build_torch, build_paddle, make_batch = base.build_torch, base.build_paddle, base.make_batch
forward_torch, forward_paddle = base.forward_torch, base.forward_paddle
NO_DECAY, LR, DECAY = ("bias", "LayerNorm.weight"), 5e-5, 0.01


def optimizer_torch(model, total_steps):
    import torch

    named = list(model.named_parameters())
    groups = [{{"params": [p for n, p in named if not any(s in n for s in NO_DECAY)], "weight_decay": DECAY}},
              {{"params": [p for n, p in named if any(s in n for s in NO_DECAY)], "weight_decay": 0.0}}]
    return torch.optim.AdamW(groups, lr=LR), None


def optimizer_paddle(model, total_steps):
    import paddle

    names = {{"LayerNorm.weight": ("norm1.weight", "norm2.weight", "layer_norm.weight")}}
    skip = [s for pattern in NO_DECAY for s in names.get(pattern, (pattern,))]
    decayed = {{p.name for n, p in model.named_parameters() if not any(s in n for s in skip)}}
    return paddle.optimizer.AdamW(learning_rate=LR * (1 + {scale!r}), parameters=model.parameters(),
                                  weight_decay=DECAY, apply_decay_param_fun=lambda name: name in decayed), None
'''
BERT_TOML = '[data]\nlabels = ["label"]\nbatch_size = 8\n[train]\niters = 5\n'

PAIRS = {"alexnet": (ALEXNET, ALEXNET_TOML, ROOT / "tests" / "pairs" / "alexnet" / "pair.py"),
         "bert": (BERT, BERT_TOML, ROOT / "examples" / "bert_sst2" / "pair.py")}


def _pair(folder: Path, name: str, full: bool, scale: float):
    source, toml, base = PAIRS[name]
    path = folder / f"{name}_{scale:g}"
    path.mkdir(parents=True, exist_ok=True)
    (path / "pair.py").write_text(textwrap.dedent(source.format(base=str(base), full=full, scale=scale)))
    (path / "pair.toml").write_text(f'name = "{name}"\npair = "pair.py"\n{toml}')
    return parse.load(path / "pair.toml")


def _verdict(session: Session) -> tuple:
    """(aligned, float64 needed, worst key's text) of the backward check, as a run decides it."""
    result = training.backward(session, write=False)
    if result.passed:
        return True, False, ""
    session.use_precision("float64")
    try:
        rules.arbitrate(result, training.backward(session, write=False))
    finally:
        session.use_precision("float32")
    worst = result.failing[0] if result.failing else None
    return result.passed, True, f"{worst.key}: {worst.reason[:120]}" if worst else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pair", choices=sorted(PAIRS))
    ap.add_argument("--size", choices=("full", "test"), default="full")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--scales", default="1e-3,3e-4,1e-4,5e-5")
    args = ap.parse_args()
    full = args.size == "full"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _pair(Path(tmp), args.pair, full, 0.0)
        session = Session(cfg, RunOptions(out_dir=Path(tmp) / "out"), progress=lambda m: None)
        session.start()
        try:
            alarms, arbitrated, seconds = 0, 0, []
            for seed in range(args.seeds):
                session.use(cfg.replace(data=replace(cfg.data, seed=seed)))
                start = time.perf_counter()
                aligned, wide, why = _verdict(session)
                seconds.append(time.perf_counter() - start)
                alarms += not aligned
                arbitrated += wide
                print(f"correct port, seed {seed}: {'ALIGNED' if aligned else 'MISALIGNED ' + why}"
                      f"{' (float64 arbitration)' if wide else ''}, {seconds[-1]:.1f} s", flush=True)
            if seconds:
                print(f"{args.pair} ({args.size}): false alarms {alarms} of {args.seeds} seeds; float64 needed "
                      f"{arbitrated} of {args.seeds}; backward check (with float64 where needed) "
                      f"{min(seconds):.1f}..{max(seconds):.1f} s")
            for scale in (float(s) for s in args.scales.split(",")):
                session.use(_pair(Path(tmp), args.pair, full, scale))
                aligned, wide, why = _verdict(session)
                print(f"paddle's updates {scale:g} larger: {'ALIGNED (not caught)' if aligned else 'MISALIGNED'}"
                      f"{' after float64' if wide else ''} {why}", flush=True)
        finally:
            session.close()


if __name__ == "__main__":
    main()
