"""Workers. Each framework subpackage imports exactly one framework, data/ (the pair's make_batch)
neither; nothing here imports either."""
