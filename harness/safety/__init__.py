"""Safety of what is read and written: pickled data files read without running code, checkpoints
checked before any worker starts, and the artifacts folder locked, staged and replaced only when
it holds nothing but a run's own files.

  bounded.py     the pickle machine under both: every global looked up, every declared size paid for
  safeload.py    a restricted unpickler: numpy arrays, dtypes, scalars and plain containers only
  picklescan.py  checkpoints walked dry (no tensor built) against an allow-list and their own sizes
  outdir.py      --out: checked, locked, staged, replaced atomically
  manifest.py    what a run wrote, listed last: the proof that lets a folder be replaced, file by file

May import: harness.errors
"""
