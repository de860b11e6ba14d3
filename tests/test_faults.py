"""The fault matrix, tried as a new user (and an attacker) would: every failure is named, with the
documented exit code, nothing keeps running, no file the harness reads runs code, and an artifacts
folder always holds one run's complete set (or the previous one, or none).

The pure tests need no worker; those marked e2e start workers (fake ones, or a tiny real pair).
"""

from __future__ import annotations

import codecs
import collections
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import ROOT, cli, line_of, tagged_processes
from harness.checks.common import judge
from harness.cli import app
from harness.config import parse
from harness.errors import OutputError, UsageError, WorkerError
from harness.report import plot
from harness.report.artifacts import ArtifactWriter, atomic_write
from harness.safety import manifest, picklescan
from harness.safety.outdir import OutFolder, lock_path
from harness.safety.safeload import load_npy_dict
from harness.verdict import keys
from harness.verdict.tolerance import ToleranceConfig
from harness.workers import protocol

MLP_TOML = parse.zoo_dir() / "mlp" / "pair.toml"


class Payload:
    """Unpickling it calls func(*args): what a malicious checkpoint carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def evil(marker: Path):
    return Payload(os.system, f"touch {marker}")


# ---------------------------------------------------------------------------- malicious files

def write_pdparams(path: Path, obj, protocol_=4) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol_))
    return path


def write_torch_zip(path: Path, pickled: bytes) -> Path:
    """The layout of torch.save's zip: <archive>/data.pkl, version, data/<storage>."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickled)
        z.writestr("archive/version", "3\n")
    return path


def write_torch_legacy(path: Path, obj) -> Path:
    """torch's pre-1.6 format: magic number, protocol, sys info, the object, storage keys."""
    parts = [0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}, obj, []]
    path.write_bytes(b"".join(pickle.dumps(p, protocol=2) for p in parts))
    return path


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_scan_refuses_a_pdparams_payload_at_any_protocol(tmp_path, proto):
    marker = tmp_path / "pwned"
    path = write_pdparams(tmp_path / "m.pdparams", {"w": np.ones(2, np.float32), "x": evil(marker)}, proto)
    with pytest.raises(UsageError) as info:
        picklescan.check_checkpoint(path, "paddle")
    assert str(info.value) == (f"{path}: refusing to load: it references posix.system, which is not allowed in a "
                               "data file (loading it could run code)")
    assert not marker.exists()


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_scan_refuses_a_torch_payload(tmp_path, layout):
    marker = tmp_path / "pwned"
    obj = collections.OrderedDict(w=evil(marker))
    path = (write_torch_zip(tmp_path / "m.pt", pickle.dumps(obj, protocol=2)) if layout == "zip"
            else write_torch_legacy(tmp_path / "m.pt", obj))
    with pytest.raises(UsageError) as info:
        picklescan.check_checkpoint(path, "torch")
    assert "references posix.system" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_scan_follows_names_through_the_memo_and_refuses_computed_ones(tmp_path):
    # protocol 4 spelling of posix.system: both strings memoized, then fetched back from the memo
    memo_trick = (b"\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93\x94.")
    path = tmp_path / "memo.pdparams"
    path.write_bytes(memo_trick)
    with pytest.raises(UsageError, match="references posix.system"):
        picklescan.check_checkpoint(path, "paddle")
    # the module name is not a string: the scan runs the pickle's own machine, which refuses it
    computed = b"\x80\x04\x8c\x05posixK\x00\x86\x8c\x06system\x93."
    path.write_bytes(computed)
    with pytest.raises(UsageError, match="STACK_GLOBAL requires str"):
        picklescan.check_checkpoint(path, "paddle")


def test_scan_accepts_state_dicts_as_saved(tmp_path):
    state = collections.OrderedDict(w=np.ones((2, 3), np.float32), b=np.zeros(3, np.float16), n=np.int64(3))
    for proto in (2, 3, 4, 5):
        picklescan.check_checkpoint(write_pdparams(tmp_path / f"s{proto}.pdparams", state, proto), "paddle")
    picklescan.check_checkpoint(write_pdparams(tmp_path / "t.pdparams", {"w": ("linear_0.w_0", np.ones(2))}), "paddle")


@pytest.mark.parametrize("content", [b"", b"garbage that is no pickle", b"\x80\x04\x95"], ids=["empty", "text", "cut"])
def test_a_broken_checkpoint_is_one_line_exit_2(tmp_path, content):
    for suffix, side in ((".pdparams", "paddle"), (".pt", "torch")):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(UsageError) as info:
            picklescan.check_checkpoint(path, side)
        assert str(path) in str(info.value) and f"not a {side} checkpoint" in str(info.value)
        assert "\n" not in str(info.value)


def _invoke(*args):
    """The CLI in this process (no worker can start here without it showing in the output)."""
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        signal.signal(signal.SIGTERM, handler)  # `run` installs its own


def _evil_npy(path: Path, marker: Path) -> Path:
    np.save(path, {"metric_accuracy": np.float64(0.5), "x": evil(marker)}, allow_pickle=True)
    return path


ENTRY_POINTS = {
    "run --weights .pdparams": lambda t, m: ("run", "--zoo", "mlp", "--out", t / "out", "--weights",
                                             write_pdparams(t / "e.pdparams", {"w": evil(m)})),
    "run --weights .pt": lambda t, m: ("run", "--zoo", "mlp", "--out", t / "out", "--weights",
                                       write_torch_zip(t / "e.pt", pickle.dumps({"w": evil(m)}, protocol=2))),
    "run --benchmark": lambda t, m: ("run", "--zoo", "mlp", "--out", t / "out", "--benchmark",
                                     _evil_npy(t / "bench.npy", m)),
    "convert --paddle-weights": lambda t, m: ("convert", "--pair", MLP_TOML, "--out", t / "out.pt", "--paddle-weights",
                                              write_pdparams(t / "e.pdparams", {"w": evil(m)})),
    "convert --torch-weights": lambda t, m: ("convert", "--pair", MLP_TOML, "--out", t / "out.pdparams",
                                             "--torch-weights", write_torch_legacy(t / "e.pth", {"w": evil(m)})),
    "compare": lambda t, m: ("compare", _evil_npy(t / "a.npy", m), _evil_npy(t / "b.npy", m)),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_no_entry_point_runs_code_from_a_file(tmp_path, entry):
    marker = tmp_path / "pwned"
    result = _invoke(*ENTRY_POINTS[entry](tmp_path, marker))
    assert result.exit_code == 2, result.output
    assert not marker.exists(), "the payload ran"
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "refusing to load" in lines[0] and "posix.system" in lines[0], result.output
    assert "starting the torch and paddle workers" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.pt").exists()


def _climbing_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("../../x.pkl", pickle.dumps({}, protocol=2))
    return path


BROKEN_CHECKPOINTS = {
    "object arrays": (lambda t: write_pdparams(t / "o.pdparams", {"w": np.array([None, 1], dtype=object)}),
                      "entry 'w' holds an object array"),
    "a list": (lambda t: write_pdparams(t / "l.pdparams", [np.ones(2, np.float32)]), "it holds a list"),
    "a truncated stream": (lambda t: t.joinpath("t.pdparams").write_bytes(
        pickle.dumps({"w": np.ones(64, np.float32)}, protocol=4)[:-60]) and t / "t.pdparams", "cut short?"),
    "a member climbing out": (lambda t: _climbing_zip(t / "c.pt"), "member '../../x.pkl' climbs out of the archive"),
}


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_a_broken_checkpoint_is_exit_2_naming_it_before_any_worker(tmp_path, case):
    make, needle = BROKEN_CHECKPOINTS[case]
    path = make(tmp_path)
    result = _invoke("run", "--zoo", "mlp", "--out", tmp_path / "out", "--weights", path)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and needle in lines[0], result.output
    assert "starting the torch and paddle workers" not in result.output


# ---------------------------------------------------------------------------- the --out folder

def previous_set(out: Path) -> dict:
    """A finished run's folder, as a later run must leave it when it fails."""
    out.mkdir(parents=True)
    (out / "report.json").write_text(json.dumps({"schema": 1, "name": "old", "aligned": True, "checks": []}))
    (out / "forward_torch.npy").write_bytes(b"old forward")
    (out / "weight_map.txt").write_text("old map\n")
    manifest.write(out)  # as the run wrote it, last
    return snapshot(out)


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_only(parent: Path, *names):
    """No staging folder, lock or temporary file left beside (or in) the artifacts."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(names)


def test_a_second_run_on_a_locked_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    with OutFolder(out):
        with pytest.raises(UsageError) as info:
            OutFolder(out).__enter__()
    assert str(info.value).startswith(f"--out {out}: another run is writing there (pid {os.getpid()}")
    with OutFolder(out) as again:  # released: the next run gets it
        assert again.staging.is_dir()
    assert_only(tmp_path)


def test_a_lock_taken_a_moment_ago_still_names_its_holder(tmp_path):
    """The holder writes its pid just after it locks: a run refused in between waits for it."""
    import fcntl
    import threading

    out = tmp_path / "out"
    fd = os.open(lock_path(out), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a holder that has not written its pid yet
    writes = threading.Timer(0.1, os.write, (fd, b"4242\n"))
    writes.start()
    try:
        with pytest.raises(UsageError, match=r"another run is writing there \(pid 4242, lock "):
            OutFolder(out).__enter__()
    finally:
        writes.join()
        os.close(fd)


def test_a_failed_run_leaves_the_previous_set_and_a_finished_one_replaces_it(tmp_path):
    out = tmp_path / "out"
    before = previous_set(out)
    with pytest.raises(RuntimeError):
        with OutFolder(out) as folder:
            ArtifactWriter(folder.staging).text("forward_diff.log", "new\n")
            raise RuntimeError("the run failed")
    assert snapshot(out) == before
    assert_only(tmp_path, "out")
    with OutFolder(out) as folder:
        ArtifactWriter(folder.staging).text("report.json", "{}\n")
        folder.commit()
    assert snapshot(out)["report.json"] == b"{}\n"  # nothing of the old run stays beside the new report
    assert set(snapshot(out)) == {"report.json", manifest.NAME}
    assert_only(tmp_path, "out")


def _user_project(root: Path) -> dict:
    """A user's folder, as the fault matrix had it: notes, code, and another tool's report.json."""
    (root / "src").mkdir(parents=True)
    (root / "notes.md").write_text("my notes\n")
    (root / "src" / "model.py").write_text("import torch\n")
    (root / "report.json").write_text('{"tool": "someone else\'s"}\n')
    return snapshot(root)


def test_a_folder_of_the_users_files_is_never_replaced_even_with_a_report_json(tmp_path):
    out = tmp_path / "myproject"
    before = _user_project(out)
    result = _invoke("run", "--zoo", "mlp", "--out", out, "--checks", "forward")
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: --out {out}: holds files that are not a reprod-harness run's ("), last
    assert "notes.md" in last and "report.json" in last and "src/" in last and ".reprod-manifest.json" in last
    assert "starting the torch and paddle workers" not in result.output
    assert snapshot(out) == before
    assert_only(tmp_path, "myproject")


@pytest.mark.parametrize("change", ["added", "edited", "linked", "earlier version"])
def test_a_runs_folder_is_replaced_only_while_its_manifest_proves_every_file(tmp_path, change):
    out = tmp_path / "out"
    previous_set(out)
    if change == "added":
        (out / "float64").mkdir()
        (out / "float64" / "mine.txt").write_text("mine")
        expect = "(float64/)"  # a folder with nothing of the run's is named as a whole
    elif change == "edited":
        (out / "report.json").write_text('{"edited": true}')
        expect = "report.json (changed since the run wrote it)"
    elif change == "linked":
        (out / "forward_torch.npy").unlink()
        (out / "forward_torch.npy").symlink_to(tmp_path / "elsewhere")
        expect = "forward_torch.npy (changed since the run wrote it)"
    else:
        (out / manifest.NAME).unlink()  # what every earlier version wrote: no proof of anything
        expect = "(forward_torch.npy, report.json, weight_map.txt); no .reprod-manifest.json proves"
    before = snapshot(out)
    with pytest.raises(UsageError) as info:
        OutFolder(out).__enter__()
    assert str(info.value).startswith(f"--out {out}: holds files that are not a reprod-harness run's (")
    assert expect in str(info.value)
    assert snapshot(out) == before
    assert_only(tmp_path, "out")


def test_files_that_appear_during_the_run_keep_the_folder_and_the_run_goes_beside(tmp_path):
    out = tmp_path / "out"
    previous_set(out)
    with pytest.raises(UsageError) as info:
        with OutFolder(out) as folder:
            ArtifactWriter(folder.staging).text("report.json", "{}\n")
            (out / "notes.md").write_text("written while the run ran")
            folder.commit()
    beside = tmp_path / f"out.run-{os.getpid()}"
    assert str(info.value) == (f"--out {out}: files that are not the run's appeared there while it ran (notes.md); "
                               f"the run's files are in {beside} instead")
    assert (out / "notes.md").read_text() == "written while the run ran" and (out / "report.json").exists()
    assert (beside / "report.json").read_text() == "{}\n"
    assert_only(tmp_path, "out", beside.name)


def test_removing_a_previous_set_removes_only_what_its_manifest_proves(tmp_path):
    out = tmp_path / "old"
    previous_set(out)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.npy").write_bytes(b"old forward")  # the same bytes as a listed file
    (out / "float64").symlink_to(tmp_path / "outside")  # a listed path through a link is never followed
    listed = manifest.read(out)
    listed["float64/x.npy"] = {"size": 11}
    listed["../outside/x.npy"] = {"size": 11}
    manifest._save(out, listed)
    (out / "weight_map.txt").write_text("edited by hand\n")
    assert not manifest.discard(out)
    assert sorted(p.name for p in out.iterdir()) == [manifest.NAME, "float64", "weight_map.txt"]
    assert (tmp_path / "outside" / "x.npy").read_bytes() == b"old forward"
    (out / "weight_map.txt").unlink()
    (out / "float64").unlink()
    assert manifest.discard(out) and not out.exists()


def test_report_html_rewritten_by_the_report_command_stays_the_runs_own(tmp_path):
    out = tmp_path / "out"
    previous_set(out)
    (out / "report.json").write_text(json.dumps({"schema": 1, "name": "old", "aligned": True, "checks": [],
                                                 "first_divergence": None, "environment": {}, "timing": {}}))
    manifest.write(out)
    assert _invoke("report", out, "--html").exit_code == 0
    assert manifest.foreign(out) == []
    with OutFolder(out):
        pass


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "out.lock").symlink_to(victim)
    with pytest.raises(UsageError, match=r"out.lock: is a link, not a lock file"):
        OutFolder(tmp_path / "out").__enter__()
    assert victim.read_text() == "precious\n"


def test_leftovers_of_a_killed_run_are_swept_under_the_lock(tmp_path):
    out = tmp_path / "out"
    before = previous_set(out)
    (tmp_path / ".out.staging-99999999").mkdir()
    (tmp_path / ".out.staging-99999999" / "forward_torch.npy").write_bytes(b"half")
    (tmp_path / "out.lock").write_text("99999999\n")  # its holder is gone: flock died with it
    with OutFolder(out):
        pass
    assert snapshot(out) == before
    assert_only(tmp_path, "out")


@pytest.mark.parametrize("case", ["file", "inside_file", "foreign", "readonly", "mount_point"])
def test_an_unusable_out_is_exit_2_before_any_worker(tmp_path, case):
    if case == "file":
        out = tmp_path / "f"
        out.write_text("mine")
        expect = f"--out {out}: is a file, not a folder"
    elif case == "inside_file":
        (tmp_path / "f").write_text("mine")
        out = tmp_path / "f" / "x"
        expect = f"--out {out}: is inside {tmp_path / 'f'}, which is a file, not a folder"
    elif case == "foreign":
        out = tmp_path / "project"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        expect = f"--out {out}: holds files that are not a reprod-harness run's (notes.txt)"
    elif case == "readonly":
        out = _mount_tmpfs(tmp_path / "ro", "ro,size=64k") / "out"
        expect = f"--out {out}: cannot write in {out.parent}: Read-only file system"
    else:
        out = _mount_tmpfs(tmp_path / "mnt", "size=64k")
        expect = f"--out {out}: is a mount point"
    try:
        result = _invoke("run", "--zoo", "mlp", "--out", out, "--checks", "forward")
    finally:
        if case in ("readonly", "mount_point"):
            subprocess.run(["umount", str(tmp_path / ("ro" if case == "readonly" else "mnt"))], check=False)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith(f"error: {expect}"), result.output
    assert "starting the torch and paddle workers" not in result.output
    if case == "foreign":
        assert (out / "notes.txt").read_text() == "mine"


def _mount_tmpfs(where: Path, options: str) -> Path:
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}): needs root and mount rights")
    return where


@pytest.fixture
def full_disk(tmp_path):
    """A tiny tmpfs with 20 KiB left: a previous set (4 pages, its manifest one), the lock and the
    first artifacts fit, the rest do not."""
    mount = _mount_tmpfs(tmp_path / "disk", "size=256k")
    try:
        (mount / "filler").write_bytes(b"\0" * (236 * 1024))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_a_one_line_error_naming_the_file_and_leaves_no_temp_file(full_disk):
    writer = ArtifactWriter(full_disk / "staging", shown=full_disk / "out")
    with pytest.raises(OutputError) as info:
        writer.text("bp_align_diff.log", "x" * 64 * 1024)
    assert str(info.value).startswith(f"{full_disk / 'out' / 'bp_align_diff.log'}: cannot write it: No space left")
    assert_only(full_disk / "staging")  # no mkstemp file


@pytest.mark.e2e  # no worker, but matplotlib's import is slow for the fast layer
def test_a_full_disk_leaves_no_half_drawn_figure(full_disk):
    writer = ArtifactWriter(full_disk / "staging", shown=full_disk / "out")
    with pytest.raises(OutputError, match="train_curve.png: cannot write it: No space left"):
        with writer.writing("train_curve.png") as path:
            curve = keys.losses(np.linspace(1, 0, 400, dtype=np.float32))
            plot.train_curve(path, judge("train", curve, curve, ToleranceConfig()), curve, curve, "big")
    assert_only(full_disk / "staging")  # no .train_curve.png.tmp.png, no mkstemp file


def test_artifacts_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.txt", b"x")
        with OutFolder(tmp_path / "out") as folder:
            folder.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750


# ---------------------------------------------------------------------------- configs, shared memory

BAD_CONFIGS = {
    "unknown key": ("[optimizer]\nnmae = 'sgd'\n", "did you mean 'name'"),
    "wrong type": ("[data]\nbatch_size = 'eight'\n", "data.batch_size: expected an integer"),
    "bad choice": ("[loss]\nkind = 'xent'\n", "loss.kind"),
    "below minimum": ("[train]\niters = 0\n", "train.iters: must be >= 1"),
    "lr <= 0": ("[optimizer]\nlr = 0\n", "optimizer.lr"),
    "not TOML": ("[data\n", "not valid TOML"),
    "missing pair file": ("", "nothere.py"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_every_bad_config_class_is_one_line_exit_2_and_keeps_the_folder(tmp_path, case):
    body, needle = BAD_CONFIGS[case]
    (tmp_path / "pair.py").write_text("def build_torch(): pass\ndef build_paddle(): pass\ndef make_batch(rng, step): pass\n")
    toml = tmp_path / "pair.toml"
    toml.write_text(f'pair = "{"nothere.py" if case == "missing pair file" else "pair.py"}"\n' + body)
    before = previous_set(tmp_path / "out")
    result = _invoke("run", toml, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert needle in lines[-1] and str(toml.name) in lines[-1], result.output
    assert snapshot(tmp_path / "out") == before


def test_stale_shared_memory_folders_are_swept(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no process has now (until reused, which the sweep tolerates)
    stale = protocol.shm_root() / f"{protocol.SHM_PREFIX}{dead.pid}-test{uuid.uuid4().hex[:6]}"
    live = protocol.shm_root() / f"{protocol.SHM_PREFIX}{os.getppid()}-test{uuid.uuid4().hex[:6]}"
    stale.mkdir()
    live.mkdir()
    try:
        protocol.sweep_stale_shm_dirs()
        assert not stale.exists() and live.exists()
    finally:
        for d in (stale, live):
            if d.exists():
                d.rmdir()


# ---------------------------------------------------------------------------- fake workers

def _fake_group(behaviours: dict, timeout: float = 20):
    from harness.workers.process import WorkerGroup, WorkerSpec
    from harness.workers.protocol import Op, Request

    specs = [WorkerSpec(name, {"behaviour": b}, framework=name.split(".")[0], entry="fake_workers")
             for name, b in behaviours.items()]
    group = WorkerGroup(specs, timeout=timeout)
    group.start()
    group.call({name: Request(Op.PING) for name in group.names})
    return group


def _train_all(group, **kwargs):
    from harness.workers.protocol import Op, Request

    try:
        with pytest.raises(WorkerError) as info:
            group.call({name: Request(Op.TRAIN) for name in group.names}, **kwargs)
    finally:
        group.close()
    return info.value


@pytest.mark.e2e
def test_a_timeout_blames_only_the_silent_worker_and_shows_where_it_was(monkeypatch):
    tag = uuid.uuid4().hex
    monkeypatch.setenv("REPROD_TEST_TAG", tag)  # inherited by the workers and the `sleep` one starts
    err = _train_all(_fake_group({"torch": "answer", "paddle": "child"}), timeout=3)
    assert err.worker == "paddle" and str(err) == ("paddle worker: no answer to 'train' within 3 s "
                                                   "(raise --timeout if the model is just slow)")
    assert "paddle worker was here when it did not answer" in err.remote_traceback
    assert 'fake_workers.py", line' in err.remote_traceback and "in hang_here" in err.remote_traceback
    assert _settled(tag) == []  # the `sleep` the worker started went with its group


@pytest.mark.e2e
@pytest.mark.parametrize("behaviour,expect", [
    ("joins_then_hangs", "no answer to 'train' in step 1 of 3 within 2 s (raise --timeout if the model is just slow)"),
    ("never_joins", "no answer to 'train' while joining the ranks within 6 s (start-up; raise --startup-timeout"),
])
def test_joining_the_ranks_is_start_up_and_a_step_after_it_is_a_step(behaviour, expect):
    """The first data-parallel call has start-up's limit only until each rank reports it joined."""
    from harness.workers.protocol import Op, Request

    group = _fake_group({"torch": behaviour}, timeout=2)
    start = time.monotonic()
    try:
        with pytest.raises(WorkerError) as info:
            group.submit({"torch": Request(Op.TRAIN)}, until_progress=(
                6, "start-up; raise --startup-timeout if that is just slow", "while joining the ranks")).wait()
    finally:
        group.close()
    assert str(info.value).startswith(f"torch worker: {expect}"), str(info.value)
    took = time.monotonic() - start
    assert (2.5 <= took < 6) if behaviour == "joins_then_hangs" else took >= 6


@pytest.mark.e2e
def test_full_shared_memory_is_said_as_such_not_as_a_dead_worker(full_disk, monkeypatch):
    from harness.workers import process
    from harness.workers.protocol import Op, Request

    monkeypatch.setattr(process, "make_shm_dir", lambda: Path(tempfile.mkdtemp(dir=full_disk)))
    group = _fake_group({"torch": "answer"})
    try:
        with pytest.raises(UsageError) as info:
            group.call({"torch": Request(Op.PING, {"payload": np.zeros(1 << 19)})})  # 4 MiB: through shared memory
    finally:
        group.close()
    message = str(info.value)
    assert message.startswith(str(full_disk)) and "cannot write it:" in message and "(shared memory" in message
    assert "No space left on device" in message or "is it full?" in message
    assert_only(full_disk, "filler")


@pytest.mark.e2e
@pytest.mark.parametrize("peer", ["peer_error", "peer_error_late"], ids=["either first", "death first"])
def test_a_dead_rank_is_named_before_its_peer(peer):
    err = _train_all(_fake_group({"torch": peer, "torch.1": "die_soon", "paddle": "sleep"}))
    assert err.worker == "torch.1"
    assert err.remote_traceback.startswith("torch.1 worker: died during 'train' (exit code 9) first;")
    assert err.remote_traceback.index("torch.1") < err.remote_traceback.index("Connection closed by peer")


# ---------------------------------------------------------------------------- real workers

PAIR = '''
import os, time, ctypes, subprocess, threading
import numpy as np
import torch, paddle

FAULT = os.environ.get("REPROD_FAULT", "")
BATCH = int(os.environ.get("REPROD_BATCH", "4"))


def _maybe(where):
    if FAULT == "raise:" + where:
        raise ValueError("boom in " + where)


def build_torch():
    _maybe("build_torch")
    if FAULT == "segfault":
        ctypes.string_at(0)
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def build_paddle():
    _maybe("build_paddle")
    if FAULT.startswith("child"):
        subprocess.Popen(["sleep", "600"])
    if FAULT == "child:raise":
        raise ValueError("boom after starting a child")
    if FAULT == "oom":
        os.kill(os.getpid(), 9)
    if FAULT == "memoryerror":
        raise MemoryError("cannot allocate 1 TiB")
    return paddle.nn.Linear(4, 3)


def make_batch(rng, step):
    _maybe("make_batch")
    return {"x": rng.standard_normal((BATCH, 4), dtype=np.float32), "label": rng.integers(0, 3, BATCH)}


def forward_torch(model, batch):
    _maybe("forward_torch")
    return {"logits": model(batch["x"])}


def forward_paddle(model, batch):
    _maybe("forward_paddle")
    if FAULT.endswith("hang"):
        time.sleep(600)
    out = model(batch["x"])
    if FAULT == "nonfinite":  # a NaN and an Inf on the paddle side
        out = out * paddle.to_tensor(np.where(np.eye(BATCH, 3) > 0, [[np.nan], [np.inf]] + [[1.0]] * (BATCH - 2), 1.0)
                                     .astype(np.float32))
    extra = {"lock": threading.Lock(), "objects": np.array([object(), 1], dtype=object),
             "lambda": lambda: 0}.get(FAULT)
    return {"logits": out} if extra is None else {"logits": out, FAULT: extra}


def loss_torch(out, batch):
    _maybe("loss_torch")
    return torch.nn.functional.cross_entropy(out["logits"], batch["label"])


def loss_paddle(out, batch):
    _maybe("loss_paddle")
    return paddle.nn.functional.cross_entropy(out["logits"], batch["label"])


def metric_torch(out, batch):
    _maybe("metric_torch")
    return {"acc": float((out["logits"].argmax(-1) == batch["label"]).float().mean())}


def metric_paddle(out, batch):
    _maybe("metric_paddle")
    return {"acc": float((out["logits"].argmax(-1) == batch["label"]).astype("float32").mean())}


def optimizer_torch(model, total_steps):
    _maybe("optimizer_torch")
    return torch.optim.SGD(model.parameters(), lr=0.1), None


def optimizer_paddle(model, total_steps):
    _maybe("optimizer_paddle")
    return paddle.optimizer.SGD(learning_rate=0.1, parameters=model.parameters()), None


if FAULT == "raise:torch_to_paddle":
    def torch_to_paddle(state):
        raise ValueError("boom in torch_to_paddle")
'''
TOML = '[data]\ninputs = ["x"]\neval_batches = 1\n[loss]\nkind = "pair"\n[metric]\nkind = "pair"\n[train]\niters = 1\n'


def _line(snippet: str) -> int:
    return line_of(PAIR, snippet)


@pytest.fixture
def pair(make_pair):
    return make_pair(PAIR, TOML, name="faults")


def _run(toml, out, fault="", *args, timeout=120, **env):
    tag = uuid.uuid4().hex
    proc = cli("run", toml, "--out", out, *args, timeout=timeout,
               env={"REPROD_TEST_TAG": tag, "REPROD_FAULT": fault, **env})
    return proc, tag


def _settled(tag: str) -> list:
    """Tagged processes still there after a moment (a killed one takes a few ms to go), less
    multiprocess's resource tracker, which serves the process that started workers in-process
    (this test process) and ends with it."""
    deadline = time.monotonic() + 3
    while (left := [p for p in tagged_processes(tag) if not _tracker(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _tracker(pid: int) -> bool:
    try:
        return b"multiprocess.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


RAISES = {  # the function that raises -> the check that calls it
    "build_torch": "forward", "build_paddle": "forward", "torch_to_paddle": "forward", "forward_torch": "forward",
    "forward_paddle": "forward", "loss_torch": "loss", "loss_paddle": "loss", "metric_torch": "metric",
    "metric_paddle": "metric", "optimizer_torch": "lr", "optimizer_paddle": "lr",
}


@pytest.mark.e2e
@pytest.mark.parametrize("fn", list(RAISES))
def test_a_raise_in_any_pair_function_is_exit_3_naming_it(pair, tmp_path, fn):
    out = tmp_path / "out"
    before = previous_set(out)
    proc, tag = _run(pair, out, f"raise:{fn}", "--checks", RAISES[fn])
    assert proc.returncode == 3, proc.stderr
    side = "paddle" if fn.endswith("paddle") else "torch"
    assert f"error: {side} worker: '" in proc.stderr and f"failed: ValueError: boom in {fn}" in proc.stderr
    assert f'{pair.parent / "pair.py"}", line' in proc.stderr and f"in {fn}" in proc.stderr
    assert snapshot(out) == before  # the previous run's complete set, untouched
    assert_only(tmp_path, "faults", "out")
    assert _settled(tag) == []


@pytest.mark.e2e  # starts no worker, but a fresh interpreter: kept out of the fast layer
@pytest.mark.parametrize("case", ["make_batch", "import"])
def test_a_broken_pair_module_is_exit_2_before_any_worker_and_keeps_the_folder(pair, make_pair, tmp_path, case):
    if case == "import":
        pair = make_pair("import numpy as np\nimport no_such_module_xyz\n", TOML, name="broken")
    out = tmp_path / "out"
    before = previous_set(out)
    proc, _tag = _run(pair, out, "raise:make_batch", "--checks", "forward", timeout=60)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(pair.parent / "pair.py") in last or "pair.py" in last, proc.stderr
    assert ("boom in make_batch" if case == "make_batch" else "no_such_module_xyz") in proc.stderr
    assert "starting the torch and paddle workers" not in proc.stderr
    assert snapshot(out) == before


@pytest.mark.e2e
@pytest.mark.parametrize("fault,expect", [
    ("oom", "error: paddle worker: died during 'setup' (killed by signal 9)"),
    ("memoryerror", "error: paddle worker: 'setup' failed: MemoryError: cannot allocate 1 TiB"),
    ("segfault", "error: torch worker: died during 'setup' (killed by signal 11)"),
    ("child:raise", "error: paddle worker: 'setup' failed: ValueError: boom after starting a child"),
])
def test_a_worker_that_is_killed_or_crashes_is_named_with_its_stack(pair, tmp_path, fault, expect):
    proc, tag = _run(pair, tmp_path / "out", fault, "--checks", "forward")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == expect
    # "child:raise": build_paddle started a `sleep` before it raised: it is gone with its worker
    if fault == "segfault":  # faulthandler's report, from the worker's own error file
        assert "torch worker's Python stack when it died" in proc.stderr
        assert f'File "{pair.parent / "pair.py"}", line {_line("ctypes.string_at(0)")} in build_torch' in proc.stderr
    assert not (tmp_path / "out").exists()
    assert _settled(tag) == []


@pytest.mark.e2e
def test_a_hang_is_timed_per_step_shows_the_stack_and_ends_the_users_child(pair, tmp_path):
    """--timeout 3 covers the step only: start-up (imports, build) has its own limit, torch answered
    and is not blamed, paddle's stack shows the line it hung on, and its `sleep` child is gone."""
    start = time.monotonic()
    proc, tag = _run(pair, tmp_path / "out", "child:hang", "--checks", "forward", "--timeout", "3")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("error: paddle worker: no answer to 'forward' within 3 s "
                                                    "(raise --timeout if the model is just slow)")
    assert "paddle worker was here when it did not answer" in proc.stderr
    assert f'File "{pair.parent / "pair.py"}", line {_line("time.sleep(600)")} in forward_paddle' in proc.stderr
    assert time.monotonic() - start < 60
    assert _settled(tag) == []


@pytest.mark.e2e
def test_a_small_timeout_never_fails_a_healthy_run_and_files_follow_the_umask(pair, tmp_path):
    tag = uuid.uuid4().hex
    cmd = (f"umask 027; exec {sys.executable} -m harness run {pair} --out {tmp_path / 'out'} --checks forward,loss "
           "--timeout 2 -q")
    proc = subprocess.run(["sh", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, REPROD_TEST_TAG=tag))
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert {p.name for p in files} >= {"report.json", "forward_torch.npy", "loss_paddle.npy", "weight_map.txt"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o640 for p in files)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert_only(tmp_path, "faults", "out")
    assert _settled(tag) == []


@pytest.mark.e2e
def test_nan_and_inf_are_a_verdict_not_a_crash(pair, tmp_path):
    proc, tag = _run(pair, tmp_path / "out", "nonfinite", "--checks", "forward")
    assert proc.returncode == 1, proc.stderr
    key = json.loads((tmp_path / "out" / "report.json").read_text())["checks"][0]["keys"][0]
    assert key["key"] == "out.logits" and key["nonfinite"] and not key["passed"]
    assert key["reason"].startswith("2 NaN/Inf value(s) (paddle)"), key["reason"]
    assert _settled(tag) == []


@pytest.mark.e2e
@pytest.mark.parametrize("fault,what", [("lock", "a _thread.lock"), ("objects", "an object array of shape (2,) holding int, object"),
                                        ("lambda", "a function")])
def test_an_output_that_cannot_cross_names_key_function_and_type(pair, tmp_path, fault, what):
    proc, tag = _run(pair, tmp_path / "out", fault, "--checks", "forward")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: paddle worker: 'forward' failed: TypeError: output 'out.{fault}' of forward_paddle is {what}, "
        "which cannot cross to the coordinator (return tensors, numbers or numeric numpy arrays)")
    assert "internal error" not in proc.stderr
    assert _settled(tag) == []


def _start(pair, out, fault, tag):
    # Ctrl-C as at a terminal even when pytest itself runs in the background of a script, where
    # the shell ignores SIGINT for it and its children, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(pair), "--out", str(out), "--checks", "forward"],
                            cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, REPROD_TEST_TAG=tag, REPROD_FAULT=fault, PYTHONUNBUFFERED="1"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:  # the progress line: both workers are up and paddle is in its hang (the
        if "tracing one forward" in line:  # set-up's forward, which pairs the modules, calls forward_paddle)
            break
    time.sleep(1.0)
    return proc


@pytest.mark.e2e
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_signalled_coordinator_leaves_nothing_and_the_previous_set(pair, tmp_path, sig, code):
    out, tag = tmp_path / "out", uuid.uuid4().hex
    before = previous_set(out)
    # build_paddle started a `sleep`: it ends too, even when the coordinator is SIGKILLed (the
    # workers die by the kernel's parent-death signal, their guardians end the rest of each group)
    proc = _start(pair, out, "child:hang", tag)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == code
    assert _settled(tag) == []
    assert snapshot(out) == before
    if sig == signal.SIGKILL:  # its staging folder and shared memory stay, until the next start sweeps them
        assert (tmp_path / f".out.staging-{proc.pid}").is_dir()
        shm = list(protocol.shm_root().glob(f"{protocol.SHM_PREFIX}{proc.pid}-*"))
        assert shm
        protocol.sweep_stale_shm_dirs()
        assert not any(p.exists() for p in shm)
        with OutFolder(out):
            pass
    assert_only(tmp_path, "faults", "out")


@pytest.mark.e2e
def test_concurrent_runs_never_mix_and_a_failed_one_keeps_the_set(pair, tmp_path):
    out = tmp_path / "out"
    procs = {batch: subprocess.Popen([sys.executable, "-m", "harness", "run", str(pair), "--out", str(out),
                                      "--checks", "forward", "-q"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=dict(os.environ, REPROD_BATCH=str(batch)))
             for batch in (8, 6)}
    results = {batch: (p.wait(timeout=120), p.stderr.read()) for batch, p in procs.items()}
    assert sorted(code for code, _ in results.values()) == [0, 2], results
    winner = next(b for b, (code, _) in results.items() if code == 0)
    loser_err = next(err for code, err in results.values() if code == 2)
    assert f"--out {out}: another run is writing there (pid {procs[winner].pid}" in loser_err
    report = json.loads((out / "report.json").read_text())
    shape = report["checks"][0]["keys"][0]["shape"]
    saved = load_npy_dict(out / "forward_torch.npy")
    assert shape == [winner, 3] and saved["out.logits"].shape == (winner, 3)
    before = snapshot(out)
    proc, _tag = _run(pair, out, "raise:forward_paddle", "--checks", "forward", REPROD_BATCH="5")
    assert proc.returncode == 3
    assert snapshot(out) == before
    assert_only(tmp_path, "faults", "out")


@pytest.mark.e2e
def test_a_full_disk_mid_run_is_exit_2_naming_the_path(pair, full_disk):
    out = full_disk / "out"
    before = previous_set(out)
    proc, tag = _run(pair, out, "", "--checks", "forward,loss,metric,lr,backward,train")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/") and "cannot write it: No space left on device" in last
    assert snapshot(out) == before
    assert_only(full_disk, "filler", "out")
    assert _settled(tag) == []


@pytest.mark.e2e
def test_files_the_workers_refuse_are_exit_2_in_one_line(tmp_path):
    """Names the pre-check lets through (allowed names, used wrongly) are still refused by the
    workers' own loaders, and that is exit 2 too, without torch's advice to load the file unsafely."""
    import torch

    paddle_file = write_pdparams(tmp_path / "c.pdparams", {"w": Payload(codecs.encode, "abc", "rot13")}, 2)
    torch.save({"w": torch.ones(2)}, tmp_path / "real.pt")
    with zipfile.ZipFile(tmp_path / "real.pt") as z:
        members = {n: z.read(n) for n in z.namelist()}
    data_pkl = next(n for n in members if n.endswith("data.pkl"))
    members[data_pkl] = b"\x80\x02ctorch\nFakeTensor\nq\x00)\x81q\x01."  # allowed by name, unknown to torch
    torch_file = tmp_path / "fake.pt"
    with zipfile.ZipFile(torch_file, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    for path, needle in ((paddle_file, "_codecs.encode with encoding 'rot13'"), (torch_file, "torch.FakeTensor")):
        proc = cli("run", "--zoo", "mlp", "--checks", "forward", "--weights", path, "--out", tmp_path / "out",
                   timeout=120)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: {path}: refusing to load") and needle in last, proc.stderr
        assert "weights_only=False" not in proc.stderr


@pytest.mark.e2e
def test_the_torch_rules_admit_everything_torch_weights_only_does(tmp_path):
    from torch import _weights_only_unpickler as wo

    refused = [name for name in wo._get_allowed_globals() if not picklescan.torch_allows(*name.rsplit(".", 1))]
    assert refused == []
    import torch

    state = {"w": torch.ones(2, 3), "p": torch.nn.Parameter(torch.zeros(2)), "h": torch.ones(2, dtype=torch.bfloat16),
             "i": torch.arange(3), "n": 3, "nested": collections.OrderedDict(b=torch.zeros(1))}
    torch.save(state, tmp_path / "s.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    picklescan.check_checkpoint(tmp_path / "s.pt", "torch")
    picklescan.check_checkpoint(tmp_path / "legacy.pt", "torch")
