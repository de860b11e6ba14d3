"""The PaddlePaddle worker: the only place paddle is imported."""
