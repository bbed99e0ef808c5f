"""``python -m engine serve``: the HTTP engine on this machine, in named steps (who may connect,
which models, the data folder, the job manager, the socket), and the helpers it runs with.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost"}


class UsageError(Exception):
    """A mistake in the command line or its files: printed as ``error: ...``, exit status 2."""


def cmd_serve(args: argparse.Namespace) -> int:
    """``python -m engine serve``: the HTTP engine on this machine, until SIGTERM or its parent exits."""
    # Imports here so `make-tiny-models` and `--help` do not need the web stack.
    import uvicorn

    from . import guard
    from .server import create_app

    try:
        # 1. Who may connect.
        tokens, loopback = serve_tokens(args)
        # 2. Which models it may load.
        set_model_policy(args)
        # 3. State on disk (temp files of a crash removed), the job manager and the app.
        storage = open_storage(args.data_dir)
        manager = job_manager(args, storage)
        app = create_app(manager, tokens, loopback_only=loopback, max_jobs_per_token=args.job_quota,
                         max_requests=args.max_connections, cache_quota=args.cache_quota)
        if args.parent_pid:
            watch_parent(args.parent_pid)
        tls = tls_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        # 4. Bind first, then report the port: no other process can take it in between.
        sock = listen(args.host, args.port)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = int(sock.getsockname()[1])
    if args.port_file:
        write_port_file(args.port_file, port)
    start_cache_keeper(storage, args.cache_quota)
    scheme = "https" if args.tls_cert else "http"
    logger.info("Viewfinder engine on %s://%s:%d, device %s, data %s, %d token(s), cache quota %.1f GiB", scheme,
                args.host, port, manager.default_device, storage.root, len(tokens), args.cache_quota / 1024**3)
    # Connections are bounded by the guard (engine/api/guard.py: head and body deadlines, a cap per
    # client and in all, idle ones making room), not by uvicorn's limit_concurrency, which counted
    # idle sockets and then answered every request 503; requests in progress by the front door.
    # With TLS the guard's protocol runs the handshake itself (loop.start_tls, bounded by the head
    # timeout) so it counts and times a socket from its accept: uvicorn gets no ssl_* options, or
    # the loop would hide a socket stuck in its handshake from the guard for 60 s. That protocol
    # pauses the raw socket until start_tls has it, which asyncio's loop honours and uvloop's does
    # not (it starts reading after connection_made), so a TLS engine runs on asyncio's loop.
    protocol, _guard = guard.protocol_class(guard.GuardLimits(
        head_timeout_s=args.head_timeout, body_grace_s=args.head_timeout, per_client=args.max_connections_per_client,
        total=args.max_connections), tls=tls)
    config = uvicorn.Config(app, log_level=args.log_level.lower(), access_log=False, timeout_keep_alive=5,
                            h11_max_incomplete_event_size=16384, http=protocol, limit_concurrency=None,
                            loop="asyncio" if tls else "auto")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def serve_tokens(args: argparse.Namespace) -> tuple[Any, bool]:
    """(the tokens, whether the host is loopback only). The token may come from the environment
    so it does not show in `ps`; a host other machines reach needs a token and TLS (or a proxy)."""
    from .auth import Tokens

    token = args.token or os.environ.get("VIEWFINDER_ENGINE_TOKEN") or None
    tokens = Tokens.single(token)
    if args.token_file:
        if token:
            raise UsageError("give either --token (VIEWFINDER_ENGINE_TOKEN) or --token-file, not both")
        try:
            tokens = Tokens.from_file(args.token_file)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--token-file: {exc}") from exc
    loopback = is_loopback(args.host)
    if not loopback and not tokens:
        raise UsageError(f"--host {args.host} is reachable from other machines; remote engines require a "
                         "token: add --token <secret> (or set VIEWFINDER_ENGINE_TOKEN) or --token-file FILE")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if not loopback and not args.tls_cert and not args.allow_plain_http:
        raise UsageError(f"--host {args.host} without TLS would send the token in clear text: add --tls-cert CERT "
                         "--tls-key KEY, or put the engine behind a TLS reverse proxy and add --allow-plain-http "
                         "(docs/shared-engine.md, 'Running a shared engine')")
    return tokens, loopback


def tls_context(cert: str, key: str) -> Any:
    """The server's TLS context (what uvicorn would build from ssl_certfile/ssl_keyfile), read before
    the socket is bound (a bad file is a usage error)."""
    import ssl

    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        return context
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"--tls-cert/--tls-key: cannot load {cert} with {key}: {exc}") from exc


def set_model_policy(args: argparse.Namespace) -> None:
    """The allow-list of models (--allow-models) and whether the Hub may be used (--no-hub)."""
    from ..models import refs as models

    try:
        allowed = models.read_allow_list(args.allow_models) if args.allow_models else None
    except (OSError, ValueError) as exc:
        raise UsageError(f"--allow-models: {exc}") from exc
    if args.no_hub:
        os.environ["HF_HUB_OFFLINE"] = "1"
    models.set_policy(allowed=allowed, hub=not args.no_hub)


def open_storage(data_dir: str | None) -> Any:
    """The data folder, with the temporary files of a crashed run removed."""
    from ..storage import Storage, default_data_dir
    from ..upkeep import clean_temporary

    storage = Storage(data_dir or default_data_dir())
    removed = clean_temporary(storage)
    if removed:
        logger.info("Removed %d temporary files left by an earlier run", removed)
    return storage


def job_manager(args: argparse.Namespace, storage: Any) -> Any:
    """The job manager on --device, with the GPU path's options (--precision, --compile)."""
    from ..jobs.manager import JobManager

    try:
        speed = speed_options(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        return JobManager(storage, default_device=args.device, max_pipelines=args.max_pipelines, speed=speed)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from exc


def listen(host: str, port: int) -> socket.socket:
    try:
        return bind_socket(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def watch_parent(parent_pid: int) -> None:
    """Stop the engine when the process that started it (Blender) is gone, even after a
    crash that skipped its clean-up. Runs on a daemon thread."""
    import signal
    import threading
    import time

    def parent_alive() -> bool:
        if os.name == "nt":
            import psutil  # on Windows os.kill(pid, 0) would terminate the process

            return bool(psutil.pid_exists(parent_pid))
        return os.getppid() == parent_pid

    def run() -> None:
        while parent_alive():
            time.sleep(2.0)
        logger.warning("Parent process %d is gone; stopping the engine", parent_pid)
        signal.raise_signal(signal.SIGTERM)

    threading.Thread(target=run, name="vf-parent-watch", daemon=True).start()


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before anything else, so the port is ours (port 0: the system picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if os.name != "nt":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def write_port_file(path: str, port: int) -> None:
    """Tell the process that started us which port we hold (atomically: it polls the file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(str(port))
    os.replace(tmp, path)


def start_cache_keeper(storage: object, quota: int, every_s: float = 600.0) -> None:
    """Prune the cache to its quota now and every ``every_s`` seconds, on a daemon thread."""
    import threading

    from ..storage import Storage
    from ..upkeep import prune

    assert isinstance(storage, Storage)

    def run() -> None:
        while True:
            try:
                report = prune(storage, quota)
                if report.evicted:
                    logger.info("Cache over its quota of %.1f GiB: %s", quota / 1024**3, report.line())
            except OSError as exc:
                logger.warning("Could not prune the cache: %s", exc)
            time.sleep(every_s)

    threading.Thread(target=run, name="vf-cache-keeper", daemon=True).start()


def speed_options(args: argparse.Namespace) -> object:
    """The GPU path's options: the VIEWFINDER_ENGINE_* variables, then --precision / --compile."""
    import dataclasses

    from ..models.pipelines import SpeedOptions

    speed = SpeedOptions.from_env()
    if args.precision:
        speed = dataclasses.replace(speed, precision=args.precision)
    if args.compile:
        speed = dataclasses.replace(speed, compile=args.compile)
    return speed
