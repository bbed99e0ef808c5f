"""Random-weight models for tests, the demo and timing: never needed by users, so the extension zip
leaves this package out (blender_manifest.toml). ``python -m engine make-tiny-models`` reaches it
from the repository."""
