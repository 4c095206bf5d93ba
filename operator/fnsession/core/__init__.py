"""Pure logic of sessions and instances: no I/O, no Kubernetes client. Everything here is a function
of its arguments, so it is tested exhaustively without a cluster (tests/unit)."""
