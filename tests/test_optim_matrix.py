"""Every optimizer x regularization x clipping, and every LR schedule family, aligned on a zoo
pair. One worker session serves the whole matrix (the cases only change the optimizer config)."""

import itertools

import pytest

from harness.checks import outputs, training
from harness.config import parse
from harness.config.optim_table import OPTIMIZERS, SCHEDULERS
from harness.session import RunOptions, Session
from harness.verdict import rules
from harness.workers.protocol import Op

pytestmark = pytest.mark.e2e

DECAYS = {"none": {}, "coupled": {"decay": "coupled"}, "decoupled": {"decay": "decoupled"}, "l1": {"decay": "l1"}}
CLIPS = {"noclip": {}, "globalclip": {"grad_clip": 0.05}}


def _valid(opt: str, decay: str) -> bool:
    if decay == "decoupled":
        return opt == "adamw"
    if opt == "adamw":
        return decay in ("none", "decoupled")
    return True


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    cfg = parse.load_zoo("tiny_transformer")
    cfg = cfg.replace(train=cfg.train.__class__(iters=5, train_iters=5, mode="eval"))
    s = Session(cfg, RunOptions(out_dir=tmp_path_factory.mktemp("matrix")), progress=lambda m: None)
    s.start()
    yield s
    s.close()


CASES = [
    (opt, decay, clip)
    for opt, decay, clip in itertools.product(OPTIMIZERS, DECAYS, CLIPS)
    if _valid(opt, decay)
]


def _settings(opt: str, decay: str, clip: str) -> dict:
    return {"name": opt, "lr": 0.01, "momentum": 0.9, "nesterov": opt == "momentum",
            "weight_decay": 0.0 if decay == "none" else 0.05, "no_decay": ["norm", "bias"], **DECAYS[decay], **CLIPS[clip]}


def test_optimizer_matrix_is_aligned(session):
    """A case float32 fails is decided in float64, as a run's arbitration does: under Adam with
    clipping the head bias's steps alternate in sign, its net update is a small remainder of
    them, and float32's round-off of the steps becomes ~1e-3 of that update."""
    failures, narrow = [], {}
    for case in CASES:
        result = training.backward(session, overrides={"optimizer": _settings(*case)}, write=False)
        losses = [k for k in result.keys if k.key.startswith("loss_")]
        worst = max(k.mean_abs for k in losses)
        if worst > 1e-6 or len(losses) != 5:
            failures.append((*case, worst))
        if not result.passed:
            narrow[case] = result
    session.use_precision("float64")
    try:
        for case, result in narrow.items():
            rules.arbitrate(result, training.backward(session, overrides={"optimizer": _settings(*case)}, write=False))
            if not result.passed:
                failures.append((*case, [f"{k.key}: {k.reason}" for k in result.failing][:3]))
    finally:
        session.use_precision("float32")
    assert not failures, failures
    assert len(CASES) == 22  # sgd, momentum, adam x {none, coupled, l1}; adamw x {none, decoupled}; x 2 clips


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_family_is_aligned(session, name):
    sched = {"name": name, "warmup_steps": 3, "total_steps": 12, "step_size": 2, "milestones": [2, 5],
             "gamma": 0.5, "power": 2.0, "end_lr": 0.0, "num_cycles": 0.5, "max_lr": 0.1}
    result = outputs.lr(session, overrides={"lr_scheduler": sched})
    assert result.passed, [f"{k.key}: {k.reason}" for k in result.failing]
    assert len(result.keys) >= session.cfg.total_steps  # past every step size and milestone: multistep's 5 + 2
    worst = max(k.max_abs for k in result.keys)
    assert worst <= 1e-9


def test_plateau_drops_the_lr_identically(session):
    result = outputs.lr(session, overrides={"lr_scheduler": {"name": "plateau", "patience": 0, "gamma": 0.5}})
    assert result.passed, [f"{k.key}: {k.reason}" for k in result.failing]
    out = session.both(Op.LR_SCHEDULE, total_steps=5, overrides={"lr_scheduler": {"name": "plateau", "patience": 0,
                                                                                  "gamma": 0.5}},
                       metrics=[1.0, 0.5, 0.5, 0.5, 0.5])
    lrs = out["torch"]["lr"]
    assert lrs[3] == pytest.approx(lrs[0] / 2)  # the schedule really moved, on both sides alike
    assert list(out["paddle"]["lr"]) == pytest.approx(list(lrs), abs=1e-12)


@pytest.mark.parametrize("extra", [{"num_cycles": 1.0}, {"end_lr": 1e-4}, {"warmup_steps": 0}])
def test_scheduler_variants_are_aligned(session, extra):
    for name in ("cosine_warmup", "polynomial", "linear_warmup"):
        sched = {"name": name, "warmup_steps": 2, "power": 1.5, "end_lr": 0.0, "num_cycles": 0.5, **extra}
        result = outputs.lr(session, overrides={"lr_scheduler": sched})
        assert result.passed, (name, extra, [f"{k.key}: {k.reason}" for k in result.failing])
