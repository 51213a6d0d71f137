"""The token endpoint's benchmark harness: `python3 bench/run.py` (see bench/README.md)."""
