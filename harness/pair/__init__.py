"""The pair: the user's pair module, loaded in any process without the framework it must not see,
and the data made from it once for both sides.

  loader.py   importing the pair module (and which libraries a process must not load)
  stubs.py    a framework a process does not hold: hidden from libraries, a stand-in for the pair's code
  making.py   make_batch run and each batch checked, in the data worker (never in the coordinator)
  batches.py  every batch made once, from the run seed, asked of the data worker and kept

May import: harness.errors, harness.config, harness.workers
"""
