"""Metrics of finished takes: temporal stability and control fidelity (take.py), and identity
across shots (identity.py). Reported by ``python -m engine metrics``."""
