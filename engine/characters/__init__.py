"""Characters of a job: references and masks checked at submit (inputs.py), the identity plan set up
once per job (identity.py), IP-Adapter loading (ip_adapter.py) and regional attention (regional.py).
See engine/IDENTITY.md."""
