"""The training run's framework-free parts: the band, the plan of chunks and evaluations, the records,
the kept states' folder, the shared dropout masks, and the configuration keys."""

import json

import numpy as np
import pytest

from backends.masks import SharedMasks, channel_shape
from harness.config import parse
from harness.errors import ConfigError, UsageError
from harness.trainrun import judging
from harness.trainrun.keep import Keeper, folder_of
from harness.trainrun.plan import GIVEN, ORDERED, OWN, SOURCE, make_plan, shared_order
from harness.trainrun.records import Records
from harness.verdict import band


def _cfg(tmp_path, train: str, data: str = ""):
    (tmp_path / "pair.py").write_text("def build_torch(): pass\n")
    (tmp_path / "pair.toml").write_text(f'pair = "pair.py"\n[data]\n{data}\n[train]\n{train}\n')
    return parse.load(tmp_path / "pair.toml")


# ---------------------------------------------------------------- the band
def test_train_noise_comes_from_step_to_step_changes_not_from_the_fall_of_the_loss():
    falling = np.linspace(2.0, 0.1, 40)  # a smooth fall: no noise at all
    mean, noise = band.train_stats(falling)
    assert mean == pytest.approx(1.05) and noise < 0.01
    rng = np.random.default_rng(0)
    noisy = np.linspace(2.0, 0.1, 400) + rng.normal(0, 0.2, 400)
    assert band.train_stats(noisy)[1] == pytest.approx(0.2 / np.sqrt(400), rel=0.1)
    assert band.train_stats([0.5]) == (0.5, None)  # one step: its noise is not known, the band not judged
    one = band.Stats(0.5, None, 1.0, 0.1, {}, {})
    assert band.points(band.INDEPENDENT, one, one)[0].limit is None


def test_eval_noise_is_the_standard_error_of_the_weighted_per_batch_losses():
    assert band.eval_noise([1.0, 1.0, 1.0], [8, 8, 8]) == 0.0
    assert band.eval_noise([0.0, 2.0], [10, 10]) == pytest.approx(1.0 / np.sqrt(2))
    assert band.eval_noise([1.0], [4]) == 0.0


def _stats(train=1.0, evaluated=0.5, acc=0.9, noise=0.01):
    return band.Stats(train, noise, evaluated, noise, {"accuracy": acc}, {"accuracy": band.binomial(acc, 400)})


def test_paired_band_is_relative_and_the_independent_one_counts_standard_errors():
    pts = band.points(band.PAIRED, _stats(), _stats(train=1.0 + 0.5 * band.PAIRED_RTOL, evaluated=0.6))
    assert [pt.series for pt in pts] == ["train_loss", "eval_loss", "metric_accuracy"]
    assert pts[0].inside and not pts[1].inside and pts[2].inside
    assert pts[0].limit == pytest.approx(band.PAIRED_RTOL * (1 + 0.5 * band.PAIRED_RTOL))
    pts = band.points(band.INDEPENDENT, _stats(), _stats(evaluated=0.5 + 3 * 0.01 * np.sqrt(2), acc=0.75))
    assert pts[1].inside  # 3 standard errors of the difference, within Z
    assert pts[1].limit == pytest.approx(band.Z * 0.01 * np.sqrt(2))
    assert not pts[2].inside  # 0.15 of accuracy on 400 examples: binomial errors 0.015 and 0.022
    assert pts[2].limit == pytest.approx(band.Z * np.sqrt(0.9 * 0.1 / 400 + 0.75 * 0.25 / 400))


def test_an_eval_curve_is_judged_by_how_much_it_moves_from_one_evaluation_to_the_next():
    assert band.curve_noise([2.0, 1.0]) is None  # one change: not known yet
    assert band.curve_noise([3.0, 2.0, 1.0]) == pytest.approx(np.sqrt(0.5))
    # only the last CURVE_WINDOW changes: an early fall no longer widens the band once the curve settles
    settled = [5.0, 1.0] + [0.10, 0.11] * band.CURVE_WINDOW
    assert band.curve_noise(settled) == pytest.approx(0.01 / np.sqrt(2))
    assert band.combined(None, 0.3) is None and band.combined(0.3, None, 0.4) == pytest.approx(0.5)
    assert band.binomial(1.5, 10) is None and band.binomial(0.5, 100) == pytest.approx(0.05)
    t, p = _stats(), _stats()
    t.metric["mse"], p.metric["mse"] = 3.0, 7.0
    mse = band.points(band.INDEPENDENT, t, p)[-1]
    assert mse.series == "metric_mse" and mse.limit is None and mse.inside  # no error known: not judged
    assert not band.points(band.PAIRED, _stats(), _stats(evaluated=float("nan")))[1].inside


def test_patience_counts_evaluations_in_a_row_outside_and_remembers_the_last_agreeing_one():
    inside, outside = [band.Point("x", 1, 1, 0.1)], [band.Point("x", 1, 2, 0.1)]
    p = band.Patience(2)
    assert p.add(1, inside) and p.agreed == 1
    assert not p.add(2, outside) and not p.exhausted
    assert p.add(3, inside) and p.streak == [] and p.agreed == 3
    p.add(4, outside)
    p.add(5, outside)
    assert p.exhausted and p.streak == [4, 5] and p.agreed == 3


def test_learning_rates_differ_beyond_a_millionth():
    assert not band.lr_differs(1e-3, 1e-3 * (1 + 1e-7))
    assert band.lr_differs(1e-3, 1.00001e-3)
    assert not band.lr_differs(0.0, 0.0) and band.lr_differs(0.0, 1e-9)


def test_band_keys_fail_only_in_a_streak_of_patience_evaluations_and_never_for_round_off():
    evals = [{"index": i, "inside": ok, "step": 10 * i, "points": [{"series": "eval_loss", "torch": 1.0, "paddle": p,
                                                                       "gap": abs(1 - p), "limit": 0.01, "inside": ok}]}
             for i, ok, p in ((1, False, 1.1), (2, True, 1.0), (3, False, 1.2), (4, False, 1.3))]
    assert judging._parted(evals, 2) == {3, 4}
    assert judging._parted(evals, 3) == set()
    evals[2]["arbitrated"] = evals[3]["arbitrated"] = "round-off"
    assert judging._parted(evals, 2) == set()


# ---------------------------------------------------------------- the plan
def test_a_plan_evaluates_once_per_epoch_by_default_and_never_chunks_across_an_evaluation_or_an_epoch(tmp_path):
    cfg = _cfg(tmp_path, "epochs = 3")
    descs = {side: {"sizes": np.full(20, 4), "batches": 20, "length": 80} for side in ("torch", "paddle")}
    plan = make_plan(cfg, OWN, descs)
    assert plan.mode == ORDERED and plan.total == 60 and plan.evals == (20, 40, 60) and plan.regime == band.PAIRED
    chunks = list(plan.chunks(0))
    assert sum(n for _, n in chunks) == 60 and max(n for _, n in chunks) <= 16
    assert all((s + n) % 20 == 0 or (s + n) // 20 == s // 20 for s, n in chunks)  # no chunk spans an epoch's end
    assert plan.epoch_of(45) == (2, 5)
    plan = make_plan(_cfg(tmp_path, "steps = 50\neval_every = 7"), OWN, descs)
    assert plan.total == 50 and plan.evals == (7, 14, 21, 28, 35, 42, 49, 50)
    assert list(plan.chunks(49)) == [(49, 1)]  # resumed at a kept evaluation: the rest


def test_each_side_reads_its_own_order_when_the_reference_order_cannot_be_shared(tmp_path):
    torch_desc = {"sizes": np.full(10, 8), "batches": 10, "length": 80}
    assert shared_order(torch_desc, {"sizes": None, "length": None}).startswith("the paddle train split has no items")
    assert "other sizes" in shared_order(torch_desc, {"sizes": np.full(11, 8), "length": 80})
    assert "no batch sampler" in shared_order({"sizes": None, "length": None, "batches": None}, torch_desc)
    plan = make_plan(_cfg(tmp_path, "epochs = 1"), OWN, {"torch": torch_desc, "paddle": {"sizes": None, "length": None}})
    assert plan.mode == OWN and plan.regime == band.INDEPENDENT and "its own order" in plan.notes[0]


def test_a_plan_refuses_what_it_cannot_run(tmp_path):
    with pytest.raises(UsageError, match="no len"):
        make_plan(_cfg(tmp_path, "epochs = 2", 'source = "paddle"'), SOURCE, {"paddle": {"sizes": None, "batches": None}})
    descs = {side: {"sizes": np.asarray([4, 4, 3]), "batches": 3, "length": 11} for side in ("torch", "paddle")}
    with pytest.raises(UsageError, match="batch 2 has 3 items, which do not split evenly over 2 ranks"):
        make_plan(_cfg(tmp_path, "epochs = 1"), OWN, descs, nprocs=2)
    plan = make_plan(_cfg(tmp_path, "steps = 12"), GIVEN, {})
    assert plan.per_epoch is None and plan.evals == (2, 4, 6, 8, 10, 12) and plan.epoch_of(7) == (0, 7)


def test_training_run_keys_are_checked_where_they_are_written(tmp_path):
    assert _cfg(tmp_path, "epochs = 2\neval_every = 5\npatience = 3").train.is_run
    assert not _cfg(tmp_path, "iters = 3").train.is_run
    for body, where in (("epochs = 2\nsteps = 10", "train.steps"), ("epochs = 0", "train.epochs"),
                        ("steps = 5\npatience = 0", "train.patience"), ("steps = 5\neval_every = 0", "train.eval_every")):
        with pytest.raises(ConfigError) as err:
            _cfg(tmp_path, body)
        assert where.split(".")[1] in str(err.value) and "pair.toml:" in str(err.value), str(err.value)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        _cfg(tmp_path, "num_epochs = 3")


# ---------------------------------------------------------------- records and the kept states
def test_records_give_the_artifacts_arrays_and_go_back_to_a_kept_evaluation():
    r = Records()
    r.add_steps({"torch": {"loss": [3.0, 2.0], "lr": [0.1, 0.1]}, "paddle": {"loss": [3.0, 2.5], "lr": [0.1, 0.2]}})
    stats = {side: band.Stats(2.5, 0.1, 1.5, 0.1, {"accuracy": 0.5}, {"accuracy": None}) for side in ("torch", "paddle")}
    r.add_eval(step=2, epoch=0, stats=stats, points=[], inside=True)
    r.add_steps({"torch": {"loss": [1.0], "lr": [0.1]}, "paddle": {"loss": [1.0], "lr": [0.1]}})
    assert r.first_lr_gap(0) == 1 and r.first_lr_gap(2) is None and r.interval("torch") == [1.0]
    a = r.arrays("paddle")
    assert list(a["train_loss"]) == [3.0, 2.5, 1.0] and list(a["eval_step"]) == [2] and list(a["eval_accuracy"]) == [0.5]
    back = Records.from_json(json.loads(json.dumps(r.to_json())))
    back.truncate(2)
    assert back.steps == 2 and len(back.evals) == 1


def test_the_kept_states_are_the_last_agreeing_evaluation_and_the_latest(tmp_path, tmp_path_factory):
    cfg = _cfg(tmp_path, "epochs = 1")
    out = tmp_path_factory.mktemp("runs") / "out"
    keeper = Keeper(out, cfg)
    assert keeper.folder == folder_of(out) and keeper.begin(resume=False) is None
    for index, agreed in ((1, 1), (2, 1), (3, 1), (4, 4)):
        for path in (keeper.path(index, "torch"), keeper.path(index, "paddle")):
            open(path, "w").close()
        keeper.keep(index, agreed)
        assert set(keeper.kept) == {index, agreed}
        assert sorted(p.name for p in (keeper.folder / "state").iterdir()) == sorted(
            f"eval_{i}_{s}.npy" for i in {index, agreed} for s in ("paddle", "torch"))
    keeper.save({"records": {}})
    resumed = Keeper(out, cfg)
    assert resumed.begin(resume=True)["records"] == {} and set(resumed.kept) == {4}
    keeper.remove()
    assert not keeper.folder.exists()


def test_resume_refuses_another_pair_or_settings_and_a_folder_holding_other_files(tmp_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "out"
    keeper = Keeper(out, _cfg(tmp_path, "epochs = 1"))
    keeper.begin(resume=False)
    keeper.save({})
    with pytest.raises(UsageError, match="another pair module or other training settings"):
        Keeper(out, _cfg(tmp_path, "epochs = 2")).begin(resume=True)
    (keeper.folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"notes\.txt"):
        Keeper(out, _cfg(tmp_path, "epochs = 1")).begin(resume=False)
    assert (keeper.folder / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- shared dropout masks
def test_both_sides_draw_one_mask_per_site_and_call_whatever_shape_holds_it():
    a, b = SharedMasks(3, sites={"drop": "fc.drop"}), SharedMasks(3, sites={"dropout_1": "fc.drop"})
    for masks in (a, b):
        masks.begin(7)
    a.open.append("fc.drop")
    b.open.append("fc.drop")
    first = a.keep((4, 2, 5), 0.25, scale=True)
    assert np.array_equal(first.reshape(8, 5), b.keep((8, 5), 0.25, scale=True))  # (B, H, T) vs (B*H, T)
    assert set(np.unique(first)) <= {0.0, np.float32(1 / 0.75)}
    assert not np.array_equal(a.keep((4, 2, 5), 0.25, scale=True), first)  # the next call of the site draws anew
    a.open.clear()
    assert not np.array_equal(a.keep((4, 2, 5), 0.25, scale=True), first)  # a functional call is a site of its own
    assert not np.array_equal(SharedMasks(3, rank=1).keep((4, 2, 5), 0.25, scale=True), first)
    wide = SharedMasks(3, sites={"drop": "fc.drop"})
    wide.begin(7)
    wide.open.append("fc.drop")
    kept_more = wide.keep((4, 2, 5), 0.5, scale=False)
    assert np.all(kept_more <= (first > 0))  # a larger p drops every unit a smaller one drops, and more
    assert np.all(SharedMasks(0).keep((3,), 1.0, scale=True) == 0)


def test_a_channel_dropout_draws_one_value_per_sample_and_channel():
    assert channel_shape((8, 16, 5, 5), 4) == (8, 16, 1, 1)
    assert channel_shape((16, 5, 5), 4) == (16, 1, 1)
    assert channel_shape((8, 16, 7), 3) == (8, 16, 1)
