"""The PyTorch worker: the only place torch is imported."""
