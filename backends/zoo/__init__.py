"""Built-in model pairs, each a pair.toml + pair.py written against the public contract."""
