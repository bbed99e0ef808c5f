"""Viewfinder generation engine.

A standalone process (``python -m engine serve``) that turns per-frame control maps
into frames with Stable Diffusion + ControlNet. It never imports bpy nor anything
outside this package, so it runs under any Python 3.10+ that has its requirements.
"""

__version__ = "0.1.0"

# Bump when a change alters the pixels produced for the same request: it is part of
# every cache key, so old cached frames are not served for the new algorithm.
ALGORITHM_VERSION = 1
