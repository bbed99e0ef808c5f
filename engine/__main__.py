"""Command line: ``python -m engine serve|make-tiny-models|metrics`` (run from the extension folder)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

logger = logging.getLogger("engine")

LOOPBACK_NAMES = {"localhost"}


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


def cmd_serve(args: argparse.Namespace) -> int:
    # Imports here so `make-tiny-models` and `--help` do not need the web stack.
    import uvicorn

    from .jobs import JobManager
    from .server import create_app
    from .storage import Storage, default_data_dir

    # The token may come from the environment so it does not show in `ps` output.
    token = args.token or os.environ.get("VIEWFINDER_ENGINE_TOKEN") or None
    if not is_loopback(args.host) and not token:
        print(f"error: --host {args.host} is reachable from other machines; remote engines require a "
              "token: add --token <secret> (or set VIEWFINDER_ENGINE_TOKEN)", file=sys.stderr)
        return 2
    storage = Storage(args.data_dir or default_data_dir())
    try:
        manager = JobManager(storage, default_device=args.device, max_pipelines=args.max_pipelines)
    except ValueError as exc:
        print(f"error: --device: {exc}", file=sys.stderr)
        return 2
    app = create_app(manager, token)
    if args.parent_pid:
        watch_parent(args.parent_pid)
    logger.info("Viewfinder engine on http://%s:%d, device %s, data %s", args.host, args.port,
                manager.default_device, storage.root)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False)
    return 0


def cmd_serve_ray(args: argparse.Namespace) -> int:
    """The same HTTP engine on Ray Serve: worker replicas on GPUs, shots in parallel (engine/serve_ray.py)."""
    token = args.token or os.environ.get("VIEWFINDER_ENGINE_TOKEN") or None
    if not is_loopback(args.host) and not token:
        print(f"error: --host {args.host} is reachable from other machines; remote engines require a "
              "token: add --token <secret> (or set VIEWFINDER_ENGINE_TOKEN)", file=sys.stderr)
        return 2
    if args.replicas < 1 or args.max_replicas < 0 or args.min_replicas < 0:
        print("error: --replicas must be at least 1, --min-replicas and --max-replicas at least 0", file=sys.stderr)
        return 2
    if args.max_replicas and args.min_replicas > args.max_replicas:
        print("error: --min-replicas must be at most --max-replicas", file=sys.stderr)
        return 2
    try:
        from .serve_ray import RayEngineConfig, serve_forever
        from .storage import default_data_dir
    except ImportError as exc:
        print(f"error: serve-ray needs Ray Serve ({exc}): pip install -r engine/requirements-ray.txt "
              "-c engine/constraints.txt -c engine/constraints-ray.txt", file=sys.stderr)
        return 2
    cfg = RayEngineConfig(
        data_dir=str(args.data_dir or default_data_dir()), token=token, replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica, device=args.device,
        max_pipelines=args.max_pipelines, split_min_frames=args.split_min_frames,
        min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        upscale_delay_s=args.upscale_delay_s, downscale_delay_s=args.downscale_delay_s,
    )
    return serve_forever(cfg, args.host, args.port, address=args.address, num_cpus=args.num_cpus)


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_models

    paths = make_tiny_models(args.dir, preset=args.preset, seed=args.seed)
    if args.preset == "tiny" and not args.no_video:
        from .tiny_video import make_tiny_video_models

        paths.update(make_tiny_video_models(args.dir, seed=args.seed))
    if args.wan_preset:
        from pathlib import Path

        from .tiny_video import make_wan_vace

        paths["wan_vace_" + args.wan_preset] = make_wan_vace(Path(args.dir).resolve(), args.wan_preset, args.seed)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .metrics import find_takes, measure_take, take_label

    takes = find_takes([Path(p) for p in args.paths])
    if not takes:
        print("error: no take folders (NNNN.png + take.json) under " + ", ".join(args.paths), file=sys.stderr)
        return 2
    status = 0
    for take in takes:
        try:
            metrics = measure_take(take, Path(args.conditioning) if args.conditioning else None)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        metrics.take = take_label(take)
        print(metrics.line(), flush=True)
    return max(status, cmd_identity(args, takes))


def cmd_identity(args: argparse.Namespace, takes: list) -> int:  # type: ignore[type-arg]
    """Identity similarity per character across shots (engine/identity_metric.py)."""
    from .errors import EngineFault
    from .identity_metric import any_characters, default_encoder, identity_lines, load_encoder

    if not any_characters(takes):
        return 0
    encoder_id = args.identity_encoder or default_encoder(takes)
    if not encoder_id:
        print("identity: skipped (no image encoder in the takes' settings; pass --identity-encoder FOLDER)",
              flush=True)
        return 0
    try:
        encoder = load_encoder(encoder_id)
    except EngineFault as exc:
        print(f"error: --identity-encoder: {exc.message}", file=sys.stderr)
        return 2
    for line in identity_lines(takes, encoder, encoder_id, max_crops=args.identity_crops):
        print(line, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Viewfinder generation engine")
    parser.add_argument("--log-level", default=os.environ.get("VIEWFINDER_ENGINE_LOG", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP engine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", default=None, help="required for non-loopback hosts")
    serve.add_argument("--data-dir", default=None, help="blobs and frame cache (default ~/.cache/viewfinder-engine)")
    serve.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    serve.add_argument("--max-pipelines", type=int, default=1, help="loaded model sets kept in memory")
    serve.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    serve.set_defaults(func=cmd_serve)

    ray = sub.add_parser("serve-ray", help="run the HTTP engine on Ray Serve, across GPUs (engine/serve_ray.py)")
    ray.add_argument("--host", default="127.0.0.1")
    ray.add_argument("--port", type=int, default=8765)
    ray.add_argument("--token", default=None, help="required for non-loopback hosts")
    ray.add_argument("--data-dir", default=None,
                     help="blobs and frame cache, a folder every replica sees (default ~/.cache/viewfinder-engine)")
    ray.add_argument("--address", default=None,
                     help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one here")
    ray.add_argument("--replicas", type=int, default=1, help="worker replicas (fixed, without autoscaling)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (0: CPU replicas)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0,
                     help="CPUs per replica (also its torch threads on CPU replicas)")
    ray.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local cluster (default: all)")
    ray.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    ray.add_argument("--max-pipelines", type=int, default=1, help="loaded model sets kept per replica")
    ray.add_argument("--split-min-frames", type=int, default=8,
                     help="INDEPENDENT shots with at least twice this many frames are split across replicas")
    ray.add_argument("--min-replicas", type=int, default=0, help="autoscaling: fewest replicas")
    ray.add_argument("--max-replicas", type=int, default=0, help="autoscaling: most replicas (0: no autoscaling)")
    ray.add_argument("--target-ongoing-requests", type=float, default=1.0,
                     help="autoscaling: units per replica it aims for")
    ray.add_argument("--upscale-delay-s", type=float, default=5.0)
    ray.add_argument("--downscale-delay-s", type=float, default=300.0)
    ray.set_defaults(func=cmd_serve_ray)

    tiny = sub.add_parser("make-tiny-models", help="write random-weight SD 1.5-layout models (tiny: also Wan VACE + motion adapter), offline")
    tiny.add_argument("dir")
    tiny.add_argument("--preset", default="tiny", choices=["tiny", "mid", "sd15"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--no-video", action="store_true", help="skip the tiny Wan VACE and motion adapter")
    tiny.add_argument("--wan-preset", default=None, choices=["tiny", "wan-1.3b"],
                      help="also write a random-weight Wan VACE of this size (wan-1.3b: GPU throughput)")
    tiny.set_defaults(func=cmd_make_tiny_models)

    metrics = sub.add_parser("metrics", help="warp error and depth fidelity of generated takes, one line per take")
    metrics.add_argument("paths", nargs="+", help="take folders, shot folders or a viewfinder/ folder")
    metrics.add_argument("--conditioning", default=None,
                         help="the shot's conditioning folder (default: <take>/../../conditioning)")
    metrics.add_argument("--identity-encoder", default=None,
                         help="CLIP vision encoder (folder or Hub id) for the identity figure; default: the "
                              "takes' IP-Adapter image encoder")
    metrics.add_argument("--identity-crops", type=int, default=8, help="frames per take cropped per character")
    metrics.set_defaults(func=cmd_metrics)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
