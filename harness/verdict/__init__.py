"""Verdict: result keys as values, the strict per-key diff, tolerances, and the named rules that
may change a key's verdict (applied in one place, after the diff). Pure numpy, no run state.

  keys.py       result keys (kind, step, name) and how they print
  tolerance.py  per-check and per-key limits
  diff.py       comparing two arrays or dicts of them: never cast, broadcast or transpose
  updates.py    parameters after training judged by their update, relative to its size
  rules.py      the named verdict rules (float64 arbitration, update scale, ...)
  band.py       a training run's band: how far apart its curves may be at an evaluation

May import: nothing else of harness
"""
