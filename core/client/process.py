"""Which engine the add-on talks to, and the local engine child process.

Resolution order: ``VIEWFINDER_ENGINE_URL``/``VIEWFINDER_ENGINE_TOKEN`` in the
environment, then a remote URL from the preferences, then a local child process
started with the interpreter from ``VIEWFINDER_ENGINE_PYTHON`` or the preferences.
A local engine listens on loopback only, with a random token; a remote one must have
a token. Runs in Blender's Python (stdlib + requests; never bpy, torch or ``engine``).
``start``/``ensure_running`` block for up to ``startup_timeout``: call them from a
worker thread.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import secrets
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .http import EngineClient, EngineError

logger = logging.getLogger(__name__)

EXTENSION_DIR = Path(__file__).resolve().parents[2]  # core/client/process.py -> the extension root
INSTALL_HINT = "use Preferences ▸ Engine ▸ Install engine, or set the engine Python in the preferences"


@dataclass(frozen=True)
class EngineConfig:
    """Where the engine is: ``url`` for a remote one, else ``python`` for a local child."""

    url: str | None = None
    token: str | None = None
    python: str | None = None


def _is_loopback_url(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_config(url: str | None = None, token: str | None = None, python: str | None = None) -> EngineConfig:
    """Apply the resolution order; raises EngineError for a remote URL without a token."""
    env_url = os.environ.get("VIEWFINDER_ENGINE_URL", "").strip()
    env_token = os.environ.get("VIEWFINDER_ENGINE_TOKEN", "").strip() or None
    remote = env_url or (url or "").strip()
    if remote:
        if not remote.startswith(("http://", "https://")):
            raise EngineError(f"Engine URL '{remote}' must start with http:// or https://", code="bad_config")
        chosen_token = (env_token if env_url else None) or token or env_token
        if not chosen_token and not _is_loopback_url(remote):
            raise EngineError(
                f"The remote engine at {remote} needs a token: set it in Preferences ▸ Engine or "
                "VIEWFINDER_ENGINE_TOKEN (start the engine with --token)", code="missing_token")
        return EngineConfig(url=remote.rstrip("/"), token=chosen_token)
    interpreter = os.environ.get("VIEWFINDER_ENGINE_PYTHON", "").strip() or (python or "").strip()
    if not interpreter:
        raise EngineError(f"No Python is set up to run the Viewfinder engine: {INSTALL_HINT}", code="no_python")
    return EngineConfig(python=interpreter)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_log_dir() -> Path:
    """A new folder only this user can enter (0700), for the engine's log and port file.

    ``mkdtemp`` picks an unpredictable name and creates it atomically, so no file or
    symlink another user planted in the temp folder can stand in for it.
    """
    return Path(tempfile.mkdtemp(prefix="viewfinder-engine-"))


def open_private(path: Path) -> int:
    """Open a new file for writing that is readable by this user only, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    return os.open(path, flags, 0o600)


def _explain_startup_failure(python: str, log_tail: str) -> str:
    for module in ("torch", "diffusers", "fastapi", "uvicorn", "transformers"):
        if f"No module named '{module}'" in log_tail:
            return f"{module} is not installed in {python}: {INSTALL_HINT}"
    if "No module named engine" in log_tail or "No module named 'engine'" in log_tail:
        return f"{python} could not find the engine package: the extension folder {EXTENSION_DIR} is incomplete"
    return f"The Viewfinder engine ({python}) stopped while starting. Last lines of its log:\n{log_tail}"


class LocalEngine:
    """A child ``python -m engine serve`` on 127.0.0.1 with a random token."""

    def __init__(self, python: str, extension_dir: str | Path = EXTENSION_DIR, data_dir: str | None = None,
                 log_path: str | Path | None = None, device: str = "auto", startup_timeout: float = 180.0,
                 env: dict[str, str] | None = None, max_pipelines: int | None = None,
                 compile_models: bool = False, extra_args: list[str] | None = None) -> None:
        self.python = python
        self.extra_args = list(extra_args or [])  # more `engine serve` options (tests: --job-quota)
        self.compile_models = compile_models  # torch.compile in the engine (the Compile preference)
        self.max_pipelines = max_pipelines
        self.extension_dir = Path(extension_dir)
        self.data_dir = data_dir
        # The log may name prompts and paths: it lives in a private folder made for this engine.
        self.log_path = Path(log_path) if log_path else private_log_dir() / "engine.log"
        self.device = device
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})
        self.token = secrets.token_urlsafe(24)
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 30.0) -> EngineClient:
        return EngineClient(self.url, self.token, timeout=timeout)

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> EngineClient:
        """Start the child and wait until /health answers; blocking (worker thread)."""
        with self._lock:
            if self.is_alive():
                return self.client()
            # 1. Launch. The token goes through the environment: argv is visible to
            #    every user of the machine in `ps`. The child binds a free port itself and
            #    writes it to the port file: no other process can take it in between.
            self.port = None
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            port_file = self.log_path.parent / f"engine-{secrets.token_hex(4)}.port"
            cmd = [self.python, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--port-file", str(port_file), "--device", self.device, "--parent-pid", str(os.getpid())]
            if self.data_dir:
                cmd += ["--data-dir", self.data_dir]
            if self.max_pipelines:
                cmd += ["--max-pipelines", str(self.max_pipelines)]
            if self.compile_models:
                cmd += ["--compile"]
            cmd += self.extra_args
            env = {**os.environ, **self.env, "VIEWFINDER_ENGINE_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
            for key in ("VIEWFINDER_ENGINE_URL", "PYTHONHOME", "PYTHONPATH"):
                # Blender sets PYTHONHOME/PYTHONPATH for its own interpreter; they would
                # make another Python load Blender's standard library.
                env.pop(key, None)
            log = os.fdopen(open_private(self.log_path), "wb")
            try:
                self.process = subprocess.Popen(cmd, cwd=str(self.extension_dir), stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            except OSError as exc:
                raise EngineError(f"Could not run the engine Python '{self.python}' ({exc}): {INSTALL_HINT}",
                                  code="no_python") from exc
            finally:
                log.close()
            logger.info("Started engine pid %d (log %s)", self.process.pid, self.log_path)
            # 2. Wait for the port, then for an answer that knows our token, watching for an early exit.
            deadline = time.monotonic() + self.startup_timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise EngineError(_explain_startup_failure(self.python, self.log_tail()), code="engine_died")
                if self.port is None:
                    self.port = _read_port(port_file)
                    if self.port is None:
                        time.sleep(0.1)
                        continue
                    logger.info("Engine pid %d listens on port %d", self.process.pid, self.port)
                try:
                    self._check_identity(EngineClient(self.url, self.token, timeout=2.0))
                    return self.client()
                except EngineError as exc:
                    if exc.code == "not_our_engine":
                        self._stop_locked()
                        raise
                    time.sleep(0.25)
            self._stop_locked()
            raise EngineError(f"The Viewfinder engine did not start within {self.startup_timeout:.0f} s. "
                              f"Last lines of its log ({self.log_path}):\n{self.log_tail()}", code="start_timeout")

    def _check_identity(self, client: EngineClient) -> None:
        """The engine on our port must accept the token we gave our child: another program
        listening there (or another user's engine) is refused rather than sent our frames."""
        try:
            client.whoami()
        except EngineError as exc:
            if exc.code in ("unauthorized", "http_404"):
                raise EngineError(
                    f"The program answering on 127.0.0.1:{self.port} is not the engine Viewfinder started (it "
                    "does not know its token); generate again to start a new one", code="not_our_engine",
                ) from exc
            raise

    def ensure_running(self) -> EngineClient:
        """The client of a running engine; restarts one that crashed or was killed."""
        if self.process is not None and not self.is_alive():
            logger.warning("Engine exited with code %s; restarting", self.exit_code())
        return self.start()

    def check(self) -> None:
        """Raise an EngineError saying so if the child has died (crash, kill, out of memory)."""
        if self.process is not None and not self.is_alive():
            raise EngineError(
                f"The Viewfinder engine stopped unexpectedly (exit code {self.exit_code()}). Generate again to "
                f"restart it. Last lines of its log ({self.log_path}):\n{self.log_tail(10)}", code="engine_died")

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


def _read_port(port_file: Path) -> int | None:
    """The port the child wrote, once it has bound it; None until then."""
    try:
        text = port_file.read_text("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 65536 else None


class Engine:
    """The engine the add-on uses: remote (a client) or local (a child process)."""

    def __init__(self, config: EngineConfig, **local_kwargs: object) -> None:
        self.config = config
        self.local_kwargs = local_kwargs
        self.local = LocalEngine(config.python, **local_kwargs) if config.python else None  # type: ignore[arg-type]

    def client(self, timeout: float = 30.0) -> EngineClient:
        """A client for a running engine, starting or restarting the local one (blocking)."""
        if self.local is not None:
            self.local.ensure_running()
            return self.local.client(timeout)
        assert self.config.url is not None
        return EngineClient(self.config.url, self.config.token, timeout=timeout)

    def stop(self) -> None:
        if self.local is not None:
            self.local.stop()


_engine: Engine | None = None
_engine_lock = threading.Lock()


def get_engine(url: str | None = None, token: str | None = None, python: str | None = None,
               **local_kwargs: object) -> Engine:
    """The add-on's engine for these preferences; replaces (and stops) one with other settings."""
    global _engine
    config = resolve_config(url, token, python)
    with _engine_lock:
        if _engine is None or _engine.config != config or _engine.local_kwargs != local_kwargs:
            if _engine is not None:
                _engine.stop()
            _engine = Engine(config, **local_kwargs)
        return _engine


def shutdown_engine() -> None:
    """Stop the local engine; called when the add-on is disabled and when Blender quits."""
    global _engine
    with _engine_lock:
        if _engine is not None:
            _engine.stop()
            _engine = None


atexit.register(shutdown_engine)

