"""The data worker: the pair's make_batch in a process of its own, with neither framework."""
