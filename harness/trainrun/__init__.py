"""The training run: the train check with [train] epochs or steps (the guide's Step 5). Both sides
train on their data at once, their curves are judged against a band as they arrive, a run whose
curves stay apart is stopped and the place where they part is found.

  plan.py      where the batches come from, the steps, the epochs, when both evaluate
  feeding.py   each worker's share of a chunk of steps and of an evaluation
  records.py   the curves so far (saved for --resume, written as artifacts)
  keep.py      <out>.training: each side's kept states, the run so far, progress.log, the live report
  live.py      the console line, progress.log and the live report.html
  check.py     the train check and the run's loop
  judging.py   the verdict (final metric, curves against the band, lr) and the artifacts
  arbitration.py  round-off or a difference: where the curves or the final metric part
  locating.py  localization from the last agreeing evaluation's kept states

May import: harness.errors, harness.config, harness.verdict, harness.report, harness.workers, harness.checks,
harness.locate, harness.safety
"""

from harness.trainrun.check import train

__all__ = ["train"]
