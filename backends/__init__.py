"""Framework workers. Each subpackage imports exactly one framework; nothing here imports either."""
