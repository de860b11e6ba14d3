"""The training run (guide Step 5), end to end on a real task: examples/digits (scikit-learn's 8x8 digits,
a small CNN, each side's own DataLoader) trained on both sides at once to a good accuracy and
aligned; each of Step 5's classic mistakes put into the port stopped early and located; an
interrupted run resumed to the same curves; the live report and progress while it runs; ranks;
the other sources of batches."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import PAIRS, ROOT, check, cli, pair_folder, report
from harness.report.artifacts import save_npy
from harness.safety.safeload import load_npy_dict

pytestmark = pytest.mark.e2e

DIGITS = ROOT / "examples" / "digits" / "pair.toml"
DIGITS_BODY = '[data]\nfields = ["image", "label"]\ninputs = ["image"]\n[loss]\nkind = "pair"\n'  # its pair.toml's
TRAIN_FILES = ("train_align_torch.npy", "train_align_paddle.npy", "train_align_diff.log", "train_curve.png")


def run_of(out) -> dict:
    return check(report(out), "train")["run"]


def test_digits_trains_on_both_sides_to_a_good_accuracy_and_is_aligned(tmp_path):
    proc = cli("run", DIGITS, "--out", tmp_path / "o", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"]] == ["data", "train"] and rep["first_divergence"] is None
    train = check(rep, "train")
    run = train["run"]
    assert run["mode"] == "ordered" and run["steps_done"] == run["steps"] == 102 and run["stopped"] is None
    assert [e["step"] for e in run["evaluations"]] == [*range(11, 102, 11), 102]
    final = {k["key"]: k for k in train["keys"]}
    assert final["metric_accuracy"]["passed"] and final["metric_accuracy"]["rtol"] == 0.0015
    assert run["evaluations"][-1]["torch"]["metric"]["accuracy"] > 0.9  # chance is 0.1
    for name in TRAIN_FILES:
        assert (tmp_path / "o" / name).stat().st_size > 0, name
    arrays = load_npy_dict(tmp_path / "o" / "train_align_paddle.npy")
    assert arrays["train_loss"].shape == (102,) and arrays["eval_step"].shape == (10,)
    html = (tmp_path / "o" / "report.html").read_text()
    assert "training run: eval_loss per evaluation" in html and "training run: learning rate per step" in html
    assert not (tmp_path / "o.training").exists()  # a finished run leaves nothing to resume


MISTAKES = {  # DIGITS_BUG -> (where, layer) localization names
    "label_smoothing": ("loss", None),
    "bn_momentum": ("buffer", "bn1"),
    "warmup": ("lr", None),
    "decay_norms": ("update", "bn1.weight"),
    "dropout": ("forward", "drop"),
    "normalize": ("data", "image"),  # the pipeline: each side collates its own items
}


@pytest.mark.parametrize("bug", list(MISTAKES))
def test_each_step5_mistake_stops_the_run_early_and_is_located(tmp_path, bug):
    proc = cli("run", DIGITS, "--checks", "train", "--out", tmp_path / "o", env={"DIGITS_BUG": bug}, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    run = check(rep, "train")["run"]
    assert run["stopped"] is not None and run["steps_done"] < run["steps"] / 2, run["stopped"]
    where, layer = MISTAKES[bug]
    div = rep["first_divergence"]
    assert (div["check"], div["where"]) == ("train", where), div
    if layer:
        assert div["layer"] == layer, div
    if bug == "warmup":  # paddle warms up over 20 steps, torch over 10: from step 1, paddle's lr is half torch's
        assert div["step"] == 1 and run["stopped"]["why"] == "lr" and "torch 0.0005, paddle 0.00025" in div["detail"]
    if bug == "bn_momentum":
        assert "momentum convention is confused" in div["detail"]
    if bug == "normalize":
        assert "the two sides' batches of step" in div["detail"] and "each collated by its own pipeline" in div["detail"]
    assert "stopped early at step" in proc.stdout


def test_without_early_stop_the_run_trains_to_the_end_and_still_names_the_place(tmp_path):
    proc = cli("run", DIGITS, "--checks", "train", "--out", tmp_path / "o", "--no-early-stop",
               env={"DIGITS_BUG": "label_smoothing"}, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    run = run_of(tmp_path / "o")
    assert run["stopped"] is None and run["steps_done"] == run["steps"]
    assert rep["first_divergence"]["where"] == "loss"
    bands = {k["key"]: k["passed"] for k in check(rep, "train")["keys"] if k["key"].startswith("band:")}
    assert not bands["band:train_loss"] and bands["band:lr"]


def test_in_its_own_order_the_correct_port_passes_and_a_mistake_chance_hides_is_caught_by_the_spot_check(tmp_path):
    proc = cli("run", DIGITS, "--checks", "train", "--out", tmp_path / "ok", env={"DIGITS_ORDER": "own"}, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    train = check(report(tmp_path / "ok"), "train")
    assert train["run"]["regime"] == "independent" and train["run"]["steps_done"] == 102
    assert any(n.startswith("the first 10 steps, re-run from the initial weights") for n in train["notes"])
    # weight decay on BatchNorm's weights: the curves stay within two seeds' spread (measured), the step does not
    proc = cli("run", DIGITS, "--checks", "train", "--out", tmp_path / "bug", timeout=600,
               env={"DIGITS_ORDER": "own", "DIGITS_BUG": "decay_norms"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "bug")
    run = check(rep, "train")["run"]
    assert run["stopped"]["why"] == "spot_check" and run["steps_done"] == 11
    div = rep["first_divergence"]
    assert (div["where"], div["layer"]) == ("update", "bn1.weight"), div


def _wait_for(path, proc, limit=300):
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def _start(*args, env=None):
    # under a shell's `&` SIGINT is ignored and stays so in the children: Python never raises
    # KeyboardInterrupt then, so the run is given the default back, as a terminal's process has it
    return subprocess.Popen([sys.executable, "-m", "harness", "run", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_an_interrupted_run_resumes_from_its_last_kept_evaluation_to_the_same_curves(tmp_path):
    short = pair_folder(tmp_path, "short", (ROOT / "examples" / "digits" / "pair.py").read_text(),
                        DIGITS_BODY + "[train]\nepochs = 1\neval_every = 11\n")
    args = ("--checks", "train", "--threads", "1")
    whole = cli("run", short, "--out", tmp_path / "whole", *args, timeout=600)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    proc = _start(short, "--out", tmp_path / "o", *args)
    _wait_for(tmp_path / "o.training" / "state" / "eval_2_torch.npy", proc)
    assert proc.poll() is None  # evaluation 2 of 4: 12 steps and the report are still ahead
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    assert (tmp_path / "o.training" / "run.json").exists() and not (tmp_path / "o").exists()
    resumed = cli("run", short, "--out", tmp_path / "o", "--resume", *args, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    run = run_of(tmp_path / "o")
    assert run["resumed_from"] in (11, 22) and run["steps_done"] == 34
    assert any("resumed from evaluation" in n for n in check(report(tmp_path / "o"), "train")["notes"])
    for side in ("torch", "paddle"):
        a, b = (load_npy_dict(tmp_path / d / f"train_align_{side}.npy") for d in ("whole", "o"))
        for key in ("train_loss", "lr", "eval_loss", "eval_accuracy"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{side} {key}")
    again = cli("run", short, "--out", tmp_path / "o", "--resume", *args)
    assert again.returncode == 2 and "holds no interrupted training run" in again.stderr


def test_progress_lines_log_and_live_report_while_it_runs_and_a_hangup_does_not_stop_it(tmp_path):
    proc = _start(DIGITS, "--checks", "train", "--out", tmp_path / "o")
    live = tmp_path / "o.training" / "report.html"
    _wait_for(live, proc)
    page = live.read_text()
    assert "training run in progress" in page and "<svg" in page and 'http-equiv="refresh"' in page
    assert proc.poll() is None  # the page appears at the first of ten evaluations: most of the run is still ahead
    proc.send_signal(signal.SIGHUP)  # the terminal went away: the run goes on
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "train: eval 1 at step 11: train_loss" in out  # plain lines off a terminal
    assert "ALIGNED" in out and not (tmp_path / "o.training").exists()


def test_data_parallel_ranks_train_each_framework_on_gloo(tmp_path):
    proc = cli("run", DIGITS, "--checks", "train", "--out", tmp_path / "o", "--nprocs", "2", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = run_of(tmp_path / "o")
    assert run["steps_done"] == 102 and run["evaluations"][-1]["torch"]["metric"]["accuracy"] > 0.9


def test_a_source_sides_batches_and_make_batchs_train_both_sides_alike(tmp_path):
    source = pair_folder(tmp_path, "source", (ROOT / "examples" / "digits" / "pair.py").read_text(),
                         DIGITS_BODY.replace("[loss]", 'source = "torch"\n[loss]') + "[train]\nsteps = 30\neval_every = 10\n")
    proc = cli("run", source, "--checks", "train", "--out", tmp_path / "s", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_of(tmp_path / "s")["mode"] == "source"
    made = pair_folder(tmp_path, "made", "from backends.zoo.cnn.pair import build_paddle, build_torch, make_batch\n",
                       '[data]\ninputs = ["image"]\n[train]\nsteps = 12\n')
    save_npy(tmp_path / "bench.npy", {"accuracy": np.float64(0.9)})
    proc = cli("run", made, "--checks", "train", "--out", tmp_path / "m", "--benchmark", tmp_path / "bench.npy")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    train = check(report(tmp_path / "m"), "train")
    assert train["run"]["mode"] == "given" and [e["step"] for e in train["run"]["evaluations"]] == [2, 4, 6, 8, 10, 12]
    failing = [k["key"] for k in train["keys"] if not k["passed"]]
    assert failing == ["benchmark:accuracy"], failing  # random labels: nowhere near 0.9
    epochs = pair_folder(tmp_path, "epochs", "from backends.zoo.cnn.pair import build_paddle, build_torch, make_batch\n",
                         '[data]\ninputs = ["image"]\n[train]\nepochs = 2\n')
    proc = cli("run", epochs, "--checks", "train", "--out", tmp_path / "e")
    assert proc.returncode == 2 and "[train] epochs needs the pair's own data" in proc.stderr, proc.stderr


def test_resume_without_an_interrupted_run_is_a_usage_error_before_any_worker(tmp_path):
    started = time.monotonic()
    proc = cli("run", DIGITS, "--out", tmp_path / "o", "--resume")
    assert proc.returncode == 2 and "holds no interrupted training run" in proc.stderr, proc.stderr
    assert time.monotonic() - started < 20
    proc = cli("run", PAIRS / "roundoff" / "pair.toml", "--out", tmp_path / "r", "--resume")
    assert proc.returncode == 2 and "continues a training run" in proc.stderr, proc.stderr
