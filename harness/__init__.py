"""reprod-harness coordinator: framework-free (never imports torch, paddle or reprod_log)."""

__version__ = "0.1.0"
