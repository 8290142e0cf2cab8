"""The ``diarflow`` command line: model provisioning and the server (more subcommands join as they land)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from diarflow.models import (
    MODELS,
    ModelProvisioningError,
    default_model_dir,
    install_models,
    verify_models,
)


def _print_models(model_dir: Path) -> bool:
    statuses = verify_models(model_dir)
    print(f"model folder: {model_dir}")
    for status in statuses:
        spec = status.spec
        origin = (f"{spec.source.wheel_filename} :: {spec.source.member}" if spec.source
                  else f"built locally from {spec.built_from}")
        size = f"{status.size_bytes / 1e6:.1f} MB" if status.size_bytes is not None else "-"
        print(f"  {spec.name:<17} {spec.filename:<26} {'OK' if status.ok else status.detail.upper()}")
        print(f"      source: {origin}")
        print(f"      sha256: {status.sha256 or '-'}   size: {size}")
        if spec.source:
            print(f"      licence: {spec.source.licence}")
    return all(s.ok for s in statuses)


def _cmd_models(args: argparse.Namespace) -> int:
    model_dir = Path(args.dir) if args.dir else default_model_dir()
    if args.action == "install":
        try:
            install_models(model_dir, wheels=[Path(w) for w in args.wheel])
        except ModelProvisioningError as exc:
            print(f"diarflow: model install failed: {exc}", file=sys.stderr)
            return 1
        _print_models(model_dir)
        return 0
    ok = _print_models(model_dir)
    if args.action == "verify" and not ok:
        print("diarflow: some models are missing or damaged; run `diarflow models install`", file=sys.stderr)
        return 1
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from diarflow.servers.app import ServerSettings, run_server

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        model_dir=Path(args.model_dir) if args.model_dir else None,
        auth_enabled=args.auth or os.environ.get("AUTH_ENABLED", "").lower() in {"1", "true", "yes"},
    )
    try:
        run_server(settings)
    except ModelProvisioningError as exc:
        print(f"diarflow: cannot start, models unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diarflow", description="Speaker diarization, live and offline.")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="install, list or verify the model files")
    models.add_argument("action", choices=["install", "list", "verify"])
    models.add_argument("--dir", help=f"model folder (default: $DIARFLOW_MODEL_DIR or {default_model_dir()})")
    models.add_argument("--wheel", action="append", default=[], metavar="PATH",
                        help="use a local wheel file (or a folder of wheels) instead of the registry; repeatable")
    models.set_defaults(func=_cmd_models)

    serve = sub.add_parser("serve", help="run the HTTP / WebSocket server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-dir", default=None)
    serve.add_argument("--auth", action="store_true", help="require API keys (same as AUTH_ENABLED=True)")
    serve.set_defaults(func=_cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
