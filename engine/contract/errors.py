"""Errors the engine reports to the add-on, each with a message a user can act on."""

from __future__ import annotations

import logging
import re
from typing import Any

logger = logging.getLogger(__name__)


_PATH = re.compile(r"""(?:[A-Za-z]:)?(?:[\\/][^\s'"\\/:]+){2,}[\\/]?""")


def without_paths(text: str) -> str:
    """An exception's text as a client may read it: file paths of the engine machine left out
    (they tell a stranger where things are); the log keeps the whole text."""
    return _PATH.sub("<path on the engine>", text)


class EngineFault(Exception):
    """An error with a machine code, an HTTP status and the request field it concerns."""

    def __init__(self, message: str, code: str, status: int = 500, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.field = field

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}


class BadRequest(EngineFault):
    def __init__(self, message: str, field: str | None = None, code: str = "bad_request") -> None:
        super().__init__(message, code=code, status=400, field=field)


class NotFound(EngineFault):
    def __init__(self, message: str, code: str = "not_found") -> None:
        super().__init__(message, code=code, status=404)


class QuotaFull(EngineFault):
    """A token at its job quota: 429 with ``Retry-After``, a signal to wait, not an error of the request."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message, code="queue_full", status=429)
        self.retry_after_s = retry_after_s


class ModelUnavailable(EngineFault):
    """A model that is neither on disk nor downloadable; the message says how to get it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, code="model_unavailable", status=400, field=field)


class OutOfMemory(EngineFault):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="out_of_memory", status=507)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU allocation failures, whichever torch build raised them."""
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "failed to allocate" in text)
