"""`routet2i` console entry point: dataset, train, evaluate, calibrate, score, serve, worker.

The gateway owns serve and worker; the router lab adds the others (`router_model.lab.cli`). Every
sub-command is a thin shell over a library function; errors in user input end with a one-line
message (exit status 2) instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys

from router_model.lab.cli import add_lab_commands

# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os
    import secrets

    import uvicorn

    from gateway.app import create_app
    from gateway.settings import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per cloud call costs more than it tells
    if args.config:
        os.environ["ROUTET2I_CONFIG"] = args.config
    from gateway.keys import open_warning

    warning = open_warning(args.host, Settings().require_api_key)
    if warning:
        print(warning, file=sys.stderr)
    if args.workers > 1:
        if args.demo:
            raise ValueError("--demo runs one process; drop --workers (or run without --demo)")
        import tempfile

        from gateway.metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="routet2i-prom-")
        )
        uvicorn.run("gateway.app:app_from_env", factory=True, workers=args.workers, host=args.host, port=args.port)
        return 0
    settings = Settings()
    worker = None
    if args.demo:
        from demo.processes import free_port
        from demo.stack import build_demo_clip, build_demo_models, start_worker
        from gateway.demo import demo_settings

        print("demo: building tiny random pipelines offline (the images are noise; routing is real) ...")
        edge, cloud = build_demo_models()
        token, port = secrets.token_urlsafe(16), free_port()
        worker = start_worker(cloud, token, port)
        settings = demo_settings(settings, f"http://127.0.0.1:{port}", token, edge, clip=build_demo_clip())
        print(f"demo: cloud worker (tiny SD3) on http://127.0.0.1:{port}")
        print("demo: arms " + ", ".join(f"{arm.name} (cost {arm.cost:g})" for arm in settings.arms))
        print(f"demo: admin token: {settings.admin_token.get_secret_value()}")
        print(f"demo: try  curl -s localhost:{args.port}/generate -H 'content-type: application/json' "
              "-d '{\"prompt\": \"a red bicycle\", \"size\": \"64x64\"}'")  # fmt: skip
    try:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    finally:
        if worker is not None:
            from demo.processes import stop

            stop(worker, timeout_s=10)
    return 0


# ---------------------------------------------------------------- worker


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    from backends.worker import TOKEN_ENV, run_worker

    run_worker(
        args.model,
        args.host,
        args.port,
        token=os.environ.get(TOKEN_ENV) or None,
        device=args.device,
        dtype=args.dtype,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        pipeline_class=args.pipeline_class,
        default_steps=args.steps,
    )
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="routet2i", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_lab_commands(sub)

    p = sub.add_parser("serve", help="run the gateway (--demo: tiny offline models, CPU only)")
    p.add_argument("--demo", action="store_true", help="tiny random pipelines + a loopback worker, no downloads")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--config", help="YAML or TOML settings file (env vars ROUTET2I_* override it)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (set ROUTET2I_REDIS_URL to share ρ)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="serve the cloud model (SD3.5) over HTTP for the gateway")
    p.add_argument("--model", required=True, help="diffusers pipeline path or hub id (e.g. SD3.5 large)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=28, help="default inference steps")
    p.add_argument("--pipeline-class", default="StableDiffusion3Pipeline")
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as exc:  # the lab's DatasetError is a ValueError
        print(f"routet2i: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
