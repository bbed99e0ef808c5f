"""Who may use the engine: one token, or a token per person from a file.

Token file (``--token-file``): one ``name:token`` per line; blank lines and lines starting
with ``#`` are ignored. ``name`` owns the jobs submitted with that token: nobody else can
see, fetch from or cancel them. The file should be readable by the engine's user only.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_TOKEN_CHARS = 16
DEFAULT_OWNER = "default"


class Tokens:
    """The accepted tokens and the name each one stands for."""

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        # token -> owner name
        self._by_token = dict(tokens or {})

    @classmethod
    def single(cls, token: str | None) -> Tokens:
        return cls({token: DEFAULT_OWNER} if token else {})

    @classmethod
    def from_file(cls, path: str | Path) -> Tokens:
        """Parse a token file; ValueError names the line that is wrong."""
        tokens: dict[str, str] = {}
        mode = Path(path).stat().st_mode
        if os.name == "posix" and mode & 0o077:
            raise ValueError(f"{path} can be read by other users of this machine (mode {mode & 0o777:o}); "
                             f"it holds everyone's tokens: chmod 600 {path}")
        text = Path(path).read_text("utf-8")
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, token = line.partition(":")
            name, token = name.strip(), token.strip()
            if not sep or not NAME_RE.match(name):
                raise ValueError(f"{path}, line {number}: expected 'name:token' with a name of letters, digits "
                                 "and _.@- (up to 64)")
            if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
                raise ValueError(f"{path}, line {number}: the token of '{name}' must be at least "
                                 f"{MIN_TOKEN_CHARS} characters without spaces (e.g. `python -c \"import "
                                 "secrets; print(secrets.token_hex(24))\"`)")
            if token in tokens:
                raise ValueError(f"{path}, line {number}: the token of '{name}' is also the token of "
                                 f"'{tokens[token]}'; give each person their own")
            tokens[token] = name
        if not tokens:
            raise ValueError(f"{path}: no 'name:token' lines")
        return cls(tokens)

    def __bool__(self) -> bool:
        return bool(self._by_token)

    def __len__(self) -> int:
        return len(self._by_token)

    def owner(self, authorization: str) -> str | None:
        """The owner of the bearer token in an Authorization header; None when it is not accepted.

        Every token is compared in constant time, so timing tells nothing about any of them.
        """
        given = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
        if not given:
            return None
        found = None
        for token, name in self._by_token.items():
            if secrets.compare_digest(given.encode(), token.encode()):
                found = name
        return found
