"""The training run's own folder, `<out>.training` beside the artifacts folder: what a long run needs
while it goes and after an interruption, where the run's staging folder (harness/safety/outdir.py)
would be gone with it.

  state/eval_<k>_<side>.npy   each side's whole training state at evaluation k (backends/trainrun.py
                              run_keep): the last agreeing evaluation's and the latest, no more
  run.json                    the run so far: its fingerprint, the curves, the kept evaluations
  report.html                 the report of the run so far, rewritten at every evaluation
  progress.log                a line per evaluation and every few seconds (tail -f it)

Written as the run goes; removed when it ends, unless it was interrupted (--resume continues it).
Only files this run writes are ever removed here; a folder of that name holding anything else is
refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from harness.errors import UsageError
from harness.report.artifacts import atomic_write
from harness.workers.protocol import SIDES

OURS = ("run.json", "report.html", "progress.log", "state")


def folder_of(out_dir: Path) -> Path:
    return Path(out_dir).with_name(Path(out_dir).name + ".training")


def fingerprint(cfg) -> str:
    """What a resumed run must share with the one it continues: the pair module's text and every
    setting that shapes the training (not the checks around it, nor the tolerances)."""
    digest = hashlib.sha256(Path(cfg.pair).read_bytes())
    wire = cfg.to_wire()
    for section in ("data", "loss", "metric", "optimizer", "lr_scheduler", "train", "distributed"):
        digest.update(json.dumps(wire[section], sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class Keeper:
    def __init__(self, out_dir: Path, cfg):
        self.folder = folder_of(out_dir)
        self.print = fingerprint(cfg)
        self.kept: dict = {}  # evaluation index -> {side: path}
        self.replaced = False  # a fresh run found an interrupted one's files and removed them

    def path(self, index: int, side: str) -> str:
        return str(self.folder / "state" / f"eval_{index}_{side}.npy")

    def begin(self, *, resume: bool) -> dict | None:
        """The folder made ready: for --resume, the run it holds (its run.json); else emptied of a
        previous run's files."""
        strangers = [p.name for p in self.folder.iterdir() if p.name not in OURS] if self.folder.is_dir() else []
        if strangers or self.folder.exists() and not self.folder.is_dir():
            raise UsageError(f"{self.folder}: holds files that are not a training run's ({', '.join(strangers[:3])}); "
                             "move them away (the run keeps its state there)")
        if resume:
            return self._resumed()
        self.replaced = (self.folder / "run.json").is_file()
        self.remove()
        (self.folder / "state").mkdir(parents=True, exist_ok=True)
        return None

    def _resumed(self) -> dict:
        try:
            saved = json.loads((self.folder / "run.json").read_text())
        except (OSError, ValueError):
            raise UsageError(f"--resume: {self.folder} holds no interrupted training run of this pair (no run.json): "
                             "run without --resume to start it") from None
        if saved.get("fingerprint") != self.print:
            raise UsageError(f"--resume: the run in {self.folder} was made with another pair module or other training "
                             "settings ([data], [loss], [metric], [optimizer], [lr_scheduler], [train], [distributed]): "
                             "run without --resume to start over")
        self.kept = {int(k): v for k, v in saved["kept"].items()}
        return saved

    def keep(self, index: int, agreed: int | None) -> None:
        """Evaluation `index` kept; only it and the last agreeing one stay (files of others removed)."""
        self.kept[index] = {side: self.path(index, side) for side in SIDES}
        for old in [k for k in self.kept if k not in (index, agreed)]:
            for path in self.kept.pop(old).values():
                Path(path).unlink(missing_ok=True)

    def save(self, state: dict) -> None:
        atomic_write(self.folder / "run.json", json.dumps({"fingerprint": self.print, "kept": self.kept, **state},
                                                          default=float).encode())

    def log(self, line: str) -> None:
        try:
            with open(self.folder / "progress.log", "a") as f:
                f.write(line + "\n")
        except OSError:
            pass  # progress only: the run does not stop for it

    def remove(self) -> None:
        """This run's files, then the folder if nothing else is in it."""
        if not self.folder.is_dir():
            return
        for name in OURS:
            target = self.folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        try:
            os.rmdir(self.folder)
        except OSError:
            pass
