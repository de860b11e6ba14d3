"""Data-parallel checks: N ranks per framework (paddle.DataParallel vs torch DDP) on shards of the
same global batches, and each framework's N-rank run against its own 1-rank run."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.checks.common import check, judge, judge_updates, save_tensors
from harness.verdict import keys
from harness.verdict.diff import CheckResult, compare_arrays
from harness.verdict.keys import Key, Kind
from harness.verdict.rules import Evidence
from harness.workers import ranks
from harness.workers.protocol import SIDES, Op, Request


@check
def backward(session, *, overrides: dict | None = None) -> CheckResult:
    """Per-rank and rank-averaged losses, parameters after the last step (rank 0) and that every
    rank of a framework holds the same parameters."""
    cfg, layout = session.cfg, session.layout
    batches = session.data.batches(range(cfg.train.iters))
    out = yield ({name: Request(Op.TRAIN, {"batches": shards(session, batches, r), "mode": cfg.train.mode,
                                                  "parallel": True, "total_steps": cfg.total_steps,
                                                  "overrides": overrides})
                        for side in SIDES for r, name in enumerate(session.ranks[side])})
    ref, other, per_rank = {}, {}, {side: [] for side in SIDES}
    for side, target in (("torch", ref), ("paddle", other)):
        for r, name in enumerate(session.ranks[side]):
            per_rank[side].append(out[name]["loss"])
            target.update(keys.losses(out[name]["loss"], rank=layout.global_rank0 + r))
        target.update(keys.losses(rank_mean(per_rank[side])))
    result, params, _ = judge_updates(session, ref, other, out, overrides)
    for side in SIDES:  # DataParallel keeps ranks identical; a rank that drifted was never synchronized
        first = _flat(out[side]["params"])
        for r, name in enumerate(session.ranks[side][1:], 1):
            result.keys.append(compare_arrays(Key(Kind.SYNC, rank=r, side=side), first, _flat(out[name]["params"]),
                                              cfg.tolerance.backward))
    _sync_notes(result)
    session.writer.check(result, ref, other)
    for side in SIDES:
        for r, losses in enumerate(per_rank[side]):
            session.writer.arrays(f"rank{r}/bp_align_{side}.npy", keys.losses(losses))
    save_tensors(session, result, params=params)
    return result


@check
def dp_equivalence(session) -> CheckResult:
    """Each framework's N-rank run against its own 1-rank run on the same global batches: wrong
    loss scaling, unsynchronized BatchNorm or non-averaged gradients show here. Judged like the
    backward check: summing gradients over ranks rounds differently."""
    cfg = session.cfg
    kwargs = {"batches": session.data.batches(range(cfg.train.iters)), "mode": cfg.train.mode,
              "total_steps": cfg.total_steps}
    single = yield session.for_both(Op.TRAIN, **kwargs)
    multi = yield ({name: Request(Op.TRAIN, {**kwargs, "batches": shards(session, kwargs["batches"], r),
                                                    "parallel": True})
                          for side in SIDES for r, name in enumerate(session.ranks[side])})
    result, one, many = CheckResult("dp_equivalence"), {}, {}
    for side in SIDES:
        part, a, b = _one_vs_many(session, side, single[side], multi, cfg.train.iters)
        for key in part.keys:
            key.id = dataclasses.replace(key.id, side=side)
        result.keys += part.keys
        result.notes += [f"{side}:{note}" for note in part.notes]
        one.update({dataclasses.replace(k, side=side): v for k, v in a.items()})
        many.update({dataclasses.replace(k, side=side): v for k, v in b.items()})
    note = _batchnorm_note(session.infos, cfg.train.mode)
    if note and not result.passed:
        result.notes.append(note)
    # not torch vs paddle here: the files are named after the two runs
    session.writer.arrays("dp_equivalence_1rank.npy", one)
    session.writer.arrays(f"dp_equivalence_{session.layout.nprocs}rank.npy", many)
    session.writer.log("dp_equivalence_diff.log", result, one, many)
    return result


def _one_vs_many(session, side: str, single: dict, multi: dict, iters: int) -> tuple:
    a = keys.losses([np.asarray(single["loss"][i]) for i in range(iters)])
    b = keys.losses(rank_mean([multi[name]["loss"] for name in session.ranks[side]]))
    # paddle tensors under torch names where the plan knows them, so torch's initial state is the start of both
    renamed = side == "paddle" and session.plan is not None
    named = session.plan.paddle_to_torch_names if renamed else (lambda x: x)
    initial = session.initial_torch if side == "torch" or session.plan is not None else {}
    grads_a, grads_b = named(single["grads"]), named(multi[side]["grads"])
    a.update({**keys.named(Kind.PARAM, named(single["params"])), **keys.named(Kind.GRAD, grads_a)})
    b.update({**keys.named(Kind.PARAM, named(multi[side]["params"])), **keys.named(Kind.GRAD, grads_b)})
    evidence = Evidence(initial=initial, grads_ref=grads_a, grads_other=grads_b, adaptive=session.adaptive(),
                        fallback=session.precision == "float32")
    return judge("backward", a, b, session.cfg.tolerance, evidence), a, b


def rank_mean(per_rank: list) -> np.ndarray:
    """The loss of each step averaged over the ranks (in float64, returned as float32)."""
    return np.mean(np.asarray(per_rank, np.float64), axis=0).astype(np.float32)


def shards(session, batches: list, local_rank: int) -> list:
    """This rank's rows of each global batch: contiguous, by global rank (DistributedBatchSampler)."""
    layout = session.layout
    return [ranks.shard(b, layout.global_rank0 + local_rank, layout.world) for b in batches]


def _flat(arrays: dict) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], np.float64).reshape(-1) for k in sorted(arrays)]) if arrays else np.zeros(0)


def _sync_notes(result: CheckResult) -> None:
    """A framework whose ranks end with different parameters never averaged its gradients."""
    for key in result.keys:
        if key.id.kind is Kind.SYNC and not key.passed:
            side = key.id.side
            result.notes.append(
                f"{key.key}: {side} rank {key.id.rank} ended with other parameters than rank 0, so {side}'s "
                f"gradients were not all-reduced; does forward_{side} call the model it is given (the DataParallel "
                "wrapper) rather than an inner module?")


def _batchnorm_note(infos: dict, mode: str) -> str | None:
    """Why a correct port can fail the DP-equivalence check: per-shard BatchNorm statistics."""
    if mode != "train":
        return None
    found = [f"{side}:{m['name']}" for side, info in infos.items() for m in info.get("modules", [])
             if "BatchNorm" in m["type"] and "Sync" not in m["type"]]
    if not found:
        return None
    return (f"BatchNorm in train mode ({', '.join(found[:3])}{'...' if len(found) > 3 else ''}): each rank normalizes "
            "with its own shard's statistics, so N ranks differ from 1 rank unless the model uses SyncBatchNorm "
            "(torch.nn.SyncBatchNorm.convert_sync_batchnorm / paddle.nn.SyncBatchNorm.convert_sync_batchnorm)")
