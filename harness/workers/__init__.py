"""Workers: the processes that run each framework, and what travels between them and the coordinator.
Framework-free: a worker is started by module name (backends.worker), never imported here.

  protocol.py  the ops, requests, replies and arrays in shared memory (also read by backends/)
  process.py   a worker group: start, submit, wait on pipes and sentinels, close for sure
  ranks.py     data-parallel layouts: ranks, devices, ports, the rank environment, batch shards
  feed.py      batches of one worker's own data ([data] source), made there once and sent to both
  doctor.py    what each framework sees in a fresh process (versions, CUDA, devices)

May import: harness.errors
"""
