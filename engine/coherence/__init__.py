"""Coherence: how the frames of a shot are ordered, batched, seeded and linked (strategies.py), and
the warps along the shot's exact flow that link them (flow.py). See engine/COHERENCE.md."""
