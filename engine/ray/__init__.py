"""The engine on Ray Serve (``python -m engine serve-ray``): the ingress (serve.py), its job table
(jobs.py) and its settings (config.py, which imports no ray)."""
