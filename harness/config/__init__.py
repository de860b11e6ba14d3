"""Configuration: the run's TOML as frozen values, and the optimizer/scheduler table both frameworks build from.

  schema.py       one dataclass per TOML section, with every default
  parse.py        TOML -> RunConfig, each value checked; the zoo and the starter templates
  source.py       where an error points (a key's own line) and its "did you mean"
  optim_table.py  [optimizer] / [lr_scheduler] -> each framework's classes (also read by backends/)

May import: harness.errors, harness.verdict
"""
