"""The command line behind ``python -m engine serve|make-tiny-models|metrics|...`` (engine/__main__.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .serve import cmd_serve, is_loopback

logger = logging.getLogger(__name__)
DEFAULT_CACHE_QUOTA = 20 * 1024**3  # engine/api/limits.py DEFAULT_CACHE_QUOTA_BYTES, without importing numpy here


class SafeFormatter(logging.Formatter):
    """Escapes line breaks and control characters in messages: a shot name with a newline
    cannot forge a log line. Tracebacks (added after the message) keep their lines. A record
    is at most MAX_RECORD_CHARS: a client's 100 kB path cannot fill the disk through the log."""

    MAX_MESSAGE_CHARS = 2000
    MAX_RECORD_CHARS = 20_000

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        message = record.message
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = f"{message[:self.MAX_MESSAGE_CHARS]}… ({len(message)} characters)"
        if any(c < " " or c == "\x7f" for c in message):
            message = message.encode("unicode_escape").decode("ascii")
        record.message = message
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if len(text) <= self.MAX_RECORD_CHARS else f"{text[:self.MAX_RECORD_CHARS]}… (cut)"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_size(text: str) -> int:
    """'20G', '500M', '1024' -> bytes."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size like 20G, 500M or 1048576") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a size cannot be negative")
    return int(value)


def cmd_cache(args: argparse.Namespace) -> int:
    from ..storage import Storage, default_data_dir
    from ..upkeep import prune, verify

    storage = Storage(args.data_dir or default_data_dir())
    if args.action == "verify":
        report = verify(storage)
    else:
        # Blobs of jobs queued or running on an engine of this folder are kept (engine/storage.py).
        report = prune(storage, args.quota, keep_recent_s=0.0)
    print(f"{args.action} {storage.root}: {report.line()}")
    return 0


def cmd_serve_ray(args: argparse.Namespace) -> int:
    """The same HTTP engine on Ray Serve: worker replicas on GPUs, shots in parallel (engine/ray/serve.py)."""
    token = args.token or os.environ.get("VIEWFINDER_ENGINE_TOKEN") or None
    if args.token_file:
        from .auth import Tokens

        try:
            Tokens.from_file(args.token_file)  # checked here; each ingress replica reads it again
        except (OSError, ValueError) as exc:
            print(f"error: --token-file: {exc}", file=sys.stderr)
            return 2
    if not is_loopback(args.host) and not (token or args.token_file):
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
        from ..ray.serve import RayEngineConfig, serve_forever
        from ..storage import default_data_dir
    except ImportError as exc:
        print(f"error: serve-ray needs Ray Serve ({exc}): pip install -r engine/requirements-ray.txt "
              "-c engine/constraints.txt -c engine/constraints-ray.txt", file=sys.stderr)
        return 2
    cfg = RayEngineConfig(
        data_dir=str(args.data_dir or default_data_dir()), token=token,
        token_file=os.path.abspath(args.token_file) if args.token_file else None, replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica, cpus_per_replica=args.cpus_per_replica, device=args.device,
        max_pipelines=args.max_pipelines, model_routing=args.model_routing, route_retry_s=args.route_retry_s,
        split_min_frames=args.split_min_frames,
        job_quota=args.job_quota, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests, upscale_delay_s=args.upscale_delay_s,
        downscale_delay_s=args.downscale_delay_s, look_back_period_s=args.look_back_period_s,
        metrics_interval_s=args.metrics_interval_s, simulate_frame_s=args.simulate_frame_s,
        simulate_load_s=args.simulate_load_s,
    )
    return serve_forever(cfg, args.host, args.port, address=args.address, num_cpus=args.num_cpus)


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from ..testing.tiny import make_tiny_models

    paths = make_tiny_models(args.dir, preset=args.preset, seed=args.seed)
    if args.preset == "tiny" and not args.no_families:
        from ..testing.tiny_families import make_family_models

        paths.update(make_family_models(args.dir, seed=args.seed))
    if args.preset == "tiny" and not args.no_video:
        from ..testing.tiny_video import make_tiny_video_models

        paths.update(make_tiny_video_models(args.dir, seed=args.seed))
    if args.wan_preset:
        from pathlib import Path

        from ..testing.tiny_video import make_wan_vace

        paths["wan_vace_" + args.wan_preset] = make_wan_vace(Path(args.dir).resolve(), args.wan_preset, args.seed)
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..metrics.take import find_takes, measure_take, take_label

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
    """Identity similarity per character across shots (engine/metrics/identity.py)."""
    from ..contract.errors import EngineFault
    from ..metrics.identity import any_characters, default_encoder, identity_lines, load_encoder

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
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    return int(args.func(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="Viewfinder generation engine")
    parser.add_argument("--log-level", default=os.environ.get("VIEWFINDER_ENGINE_LOG", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_serve, add_serve_ray, add_cache, add_make_tiny_models, add_make_toy_models, add_metrics):
        add(sub)
    return parser


def add_serve(sub: Any) -> None:
    """``serve``: the HTTP engine on this machine (engine/api/serve.py)."""
    serve = sub.add_parser("serve", help="run the HTTP engine")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", default=None, help="required for non-loopback hosts (a secret that starts with - goes as --token=SECRET)")
    serve.add_argument("--data-dir", default=None, help="blobs and frame cache (default ~/.cache/viewfinder-engine)")
    serve.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    serve.add_argument("--max-pipelines", type=int, default=1, help="loaded model sets kept in memory")
    serve.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    serve.add_argument("--token-file", default=None, help="a 'name:token' per line: a token per person, who owns "
                       "their jobs")
    serve.add_argument("--tls-cert", default=None, help="PEM certificate: serve https (with --tls-key)")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.add_argument("--allow-plain-http", action="store_true",
                       help="serve plain http on a non-loopback host (only behind a TLS reverse proxy)")
    serve.add_argument("--allow-models", default=None,
                       help="a file with one allowed model per line (Hub id or path); others are refused")
    serve.add_argument("--no-hub", action="store_true", help="never download from the Hugging Face Hub")
    serve.add_argument("--cache-quota", type=parse_size, default=DEFAULT_CACHE_QUOTA,
                       help="blobs + frames kept on disk, least recently used evicted past it (default 20G)")
    serve.add_argument("--port-file", default=None, help="write the port actually bound here (with --port 0)")
    serve.add_argument("--job-quota", "--max-jobs-per-token", dest="job_quota", type=positive_int, default=16,
                       help="queued + running jobs per token (published on GET /limits; past it a submit is "
                       "answered 429 with Retry-After)")
    serve.add_argument("--max-connections", type=positive_int, default=256,
                       help="open connections at once (one waiting for its request head makes room for a new one; "
                       "past it with every connection busy, 503)")
    serve.add_argument("--max-connections-per-client", type=positive_int, default=64,
                       help="open connections of one client address at once (the same rule)")
    serve.add_argument("--head-timeout", type=float, default=10.0,
                       help="seconds a request head may take to arrive; a body must then keep coming at 4 KiB/s")
    serve.add_argument("--precision", default=None, choices=["auto", "fp16", "bf16", "fp32"],
                       help="model precision (default auto: fp16 on GPUs, fp32 on the CPU)")
    serve.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                       help="torch.compile the UNet and ControlNets (backend, default inductor): faster after a "
                       "warm-up of a minute or more per image size; falls back to eager if it fails")
    serve.set_defaults(func=cmd_serve)


def add_serve_ray(sub: Any) -> None:
    """``serve-ray``: the same HTTP engine on Ray Serve (engine/ray/serve.py)."""
    ray = sub.add_parser("serve-ray", help="run the HTTP engine on Ray Serve, across GPUs (engine/ray/serve.py)")
    ray.add_argument("--host", default="127.0.0.1")
    ray.add_argument("--port", type=int, default=8765)
    ray.add_argument("--token", default=None, help="required for non-loopback hosts (a secret that starts with - goes as --token=SECRET)")
    ray.add_argument("--token-file", default=None, help="a 'name:token' per line: a token per artist, each with "
                     "its own jobs, quota and fair share of the replicas (a file every node can read)")
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
    ray.add_argument("--max-pipelines", type=positive_int, default=1,
                     help="loaded model sets kept per replica (least recently used unloaded first)")
    ray.add_argument("--no-model-routing", dest="model_routing", action="store_false",
                     help="send units to any free replica, not preferably to one holding their model")
    ray.add_argument("--job-quota", type=positive_int, default=16, help="queued + running jobs per token")
    ray.add_argument("--route-retry-s", type=float, default=0.01,
                     help="how often Serve's router looks again for a free replica (its default doubles to 0.5 s)")
    ray.add_argument("--split-min-frames", type=int, default=8,
                     help="INDEPENDENT shots with at least twice this many frames are split across replicas")
    ray.add_argument("--min-replicas", type=int, default=0, help="autoscaling: fewest replicas")
    ray.add_argument("--max-replicas", type=int, default=0, help="autoscaling: most replicas (0: no autoscaling)")
    ray.add_argument("--target-ongoing-requests", type=float, default=1.0,
                     help="autoscaling: units per replica it aims for")
    ray.add_argument("--upscale-delay-s", type=float, default=5.0)
    ray.add_argument("--downscale-delay-s", type=float, default=300.0)
    ray.add_argument("--look-back-period-s", type=float, default=30.0,
                     help="autoscaling: the window ongoing units are averaged over")
    ray.add_argument("--metrics-interval-s", type=float, default=10.0,
                     help="autoscaling: how often replicas and the ingress report ongoing units")
    ray.add_argument("--simulate-frame-s", type=float, default=0.0,
                     help="the stand-in model (engine/ray/standin.py): every frame takes this long, by "
                     "sleeping; for measuring the pool without GPUs (0: real models)")
    ray.add_argument("--simulate-load-s", type=float, default=0.0,
                     help="the stand-in model: seconds a pipeline load takes")
    ray.set_defaults(func=cmd_serve_ray)


def add_cache(sub: Any) -> None:
    """``cache verify|prune``: check or shrink the data folder."""
    cache = sub.add_parser("cache", help="check or shrink the engine's blobs and frame cache")
    cache.add_argument("action", choices=["verify", "prune"],
                       help="verify: delete damaged blobs and frames; prune: evict least recently used to --quota")
    cache.add_argument("--data-dir", default=None, help="default ~/.cache/viewfinder-engine")
    cache.add_argument("--quota", type=parse_size, default=DEFAULT_CACHE_QUOTA, help="for prune (default 20G)")
    cache.set_defaults(func=cmd_cache)


def add_make_tiny_models(sub: Any) -> None:
    """``make-tiny-models DIR``: random-weight models for tests and the demo (engine/testing/)."""
    tiny = sub.add_parser("make-tiny-models", help="write random-weight SD 1.5-layout models (tiny: also SDXL, Flux.1, Wan VACE + motion "
                                                   "adapter), offline")
    tiny.add_argument("dir")
    tiny.add_argument("--preset", default="tiny", choices=["tiny", "mid", "sd15"])
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--no-video", action="store_true", help="skip the tiny Wan VACE and motion adapter")
    tiny.add_argument("--no-families", action="store_true",
                      help="skip the tiny SDXL and Flux.1 models, their union ControlNets, LoRAs and single files")
    tiny.add_argument("--wan-preset", default=None, choices=["tiny", "wan-1.3b"],
                      help="also write a random-weight Wan VACE of this size (wan-1.3b: GPU throughput)")
    tiny.set_defaults(func=cmd_make_tiny_models)


def cmd_make_toy_models(args: argparse.Namespace) -> int:
    from ..testing.toy import make_toy_models

    try:
        paths = make_toy_models(args.dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


def add_make_toy_models(sub: Any) -> None:
    """``make-toy-models DIR``: the trained toy-world models (engine/testing/toy/MODEL_CARD.md)."""
    toy = sub.add_parser("make-toy-models", help="write the trained toy-world models (engine/testing/toy/MODEL_CARD.md)")
    toy.add_argument("dir")
    toy.set_defaults(func=cmd_make_toy_models)


def add_metrics(sub: Any) -> None:
    """``metrics``: warp error, fidelity and identity of takes (engine/metrics/)."""
    metrics = sub.add_parser("metrics", help="warp error and depth fidelity of generated takes, one line per take")
    metrics.add_argument("paths", nargs="+", help="take folders, shot folders or a viewfinder/ folder")
    metrics.add_argument("--conditioning", default=None,
                         help="the shot's conditioning folder (default: <take>/../../conditioning)")
    metrics.add_argument("--identity-encoder", default=None,
                         help="CLIP vision encoder (folder or Hub id) for the identity figure; default: the "
                              "takes' IP-Adapter image encoder")
    metrics.add_argument("--identity-crops", type=int, default=8, help="frames per take cropped per character")
    metrics.set_defaults(func=cmd_metrics)
