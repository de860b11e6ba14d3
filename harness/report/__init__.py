"""Report: everything a run leaves for a reader: the RunReport and report.json, the reprod_log
artifacts, the console (live progress and the answer-first summary), report.html with its curves,
train_curve.png, and the `compare` command's diff of two reprod_log files.

  runreport.py  the RunReport, its first divergence, report.json read and written
  artifacts.py  reprod_log-compatible .npy files and diff logs, written atomically
  summary.py    the verdict line and each check's worst key against its named limit
  console.py    the console report (rich), answer first
  progress.py   the live progress display
  curves.py     per-step curves read back from the artifacts (a training run's too)
  svg.py        curves drawn as inline SVG
  html.py       report.html, self-contained
  plot.py       train_curve.png (matplotlib, when installed)
  runplot.py    train_curve.png of a training run
  compare.py    two reprod_log files diffed

May import: harness.errors, harness.safety, harness.verdict
"""
