"""Command line: ``python -m engine serve|make-tiny-models|metrics`` (run from the extension folder).

The commands live in engine/api/cli.py; this file only makes the package runnable.
"""

from __future__ import annotations

import sys

from .api.cli import main

if __name__ == "__main__":
    sys.exit(main())
