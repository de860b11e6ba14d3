"""Workers: the processes that run each framework, and what travels between them and the coordinator.
Framework-free: a worker is started by module name (backends.worker), never imported here.

  protocol.py  the ops, requests, replies and arrays in shared memory (also read by backends/)
  process.py   a worker group: start, submit, wait on pipes and sentinels, close for sure
  reaping.py   every process below the workers (or carrying the run's tag) found and ended at close
  ranks.py     data-parallel layouts: ranks, devices, ports, the rank environment, batch shards
  feed.py      batches of one worker's own data ([data] source), made there once and sent to both
  doctor.py    what each framework sees in a fresh process (versions, CUDA, devices)
  interpreters.py  each worker's Python (another environment's, if given); the handshake across them

May import: harness.errors
"""
