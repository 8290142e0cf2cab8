"""Batch diarization of many files: :func:`run_batch`, its progress line and the ``diarflow batch`` command.

The engine (local processes, :mod:`diarflow.batch_local`, or Ray Data, :mod:`diarflow.ray_backend`)
only decides *where* :func:`~diarflow.batch_process.process_file` runs; expanding the inputs
(:mod:`diarflow.batch_inputs`), writing the outputs and knowing what is already done
(:mod:`diarflow.batch_outputs`) are shared, with the records and Arrow schemas of
:mod:`diarflow.batch_records`, so both engines produce the same folder:

```
OUT/<uri>.rttm, OUT/<uri>.json      per file, as ``diarflow diarize`` writes them
OUT/segments/part-*.parquet         one dataset: uri, start_s, end_s, speaker, confidence
OUT/files/part-*.parquet            one row per input: uri, path, status, error, duration_s, speakers,
                                    seconds_compute (status "ok" rows are what a re-run skips)
```
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Sequence

from diarflow.batch_inputs import expand_inputs
from diarflow.batch_local import run_local
from diarflow.batch_outputs import BatchWriter
from diarflow.batch_process import process_file
from diarflow.operators.speaker_count import count_from_text
from diarflow.batch_records import (FILES_SCHEMA, FORMATS, OUTCOME_SCHEMA, SEGMENTS_SCHEMA, WORKER_DIED, BatchItem,
                                    BatchOptions, FileOutcome, outcomes_from_table, outcomes_to_table)

__all__ = [
    "FILES_SCHEMA", "FORMATS", "OUTCOME_SCHEMA", "SEGMENTS_SCHEMA", "WORKER_DIED", "BatchError", "BatchItem",
    "BatchOptions", "BatchReport", "BatchWriter", "FileOutcome", "Progress", "add_batch_arguments",
    "batch_command", "expand_inputs", "outcomes_from_table", "outcomes_to_table", "process_file", "run_batch",
    "run_local",
]


class Progress:
    """One status line: files done, hours of audio done, throughput (hours of audio per wall-clock minute)."""

    def __init__(self, total_files: int, stream: IO[str] | None, period_s: float = 10.0) -> None:
        self.total_files = total_files
        self.stream = stream
        self.period_s = period_s
        self.done = 0
        self.failed = 0
        self.audio_s = 0.0
        self.started = time.monotonic()
        self._last_print = 0.0
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def line(self) -> str:
        elapsed_s = max(time.monotonic() - self.started, 1e-9)
        rate = self.audio_s / 3600 / (elapsed_s / 60)
        return (f"{self.done}/{self.total_files} files ({self.failed} failed), {self.audio_s / 3600:.2f} h of audio, "
                f"{rate:.2f} h/min ({self.audio_s / elapsed_s:.0f}x real time), {elapsed_s:.0f} s")

    def update(self, outcome: FileOutcome) -> None:
        self.done += 1
        self.failed += outcome.status != "ok"
        self.audio_s += outcome.duration_s or 0.0
        if self.stream is None:
            return
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r{self.line()}")
            self.stream.flush()
        elif now - self._last_print >= self.period_s or self.done == self.total_files:
            self._last_print = now
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")


@dataclass
class BatchReport:
    """What a run did: inputs found, skipped as done, processed, failed; hours of audio; wall time."""

    inputs: int = 0
    skipped: int = 0
    processed: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)


class BatchError(Exception):
    """The batch itself could not run (nothing to do, unusable output folder, no Ray): exit non-zero."""


def run_batch(inputs: Sequence[str], out_dir: str | Path, options: BatchOptions | None = None, *,
              engine: Literal["local", "ray"] = "local", workers: int = 0, ray_address: str | None = None,
              stream: IO[str] | None = sys.stderr) -> BatchReport:
    """Diarize every input into ``out_dir``, skipping inputs an earlier run finished.

    Parameters
    ----------
    inputs
        Files, folders, globs, http(s) URLs and list files (``.txt`` / ``.csv`` / ``.parquet``).
    out_dir
        Output folder (created if missing); the resume record lives in it.
    options
        Speaker constraints, formats and model folder.
    engine
        ``"local"``: a process pool here. ``"ray"``: Ray Data on an actor pool (``pip install 'diarflow[ray]'``).
    workers
        Worker processes / actors; 0 = one per core (local) or per CPU of the Ray cluster.
    ray_address
        ``"auto"`` or ``host:port`` of a running Ray cluster; ``None`` starts a local Ray (ray engine).
    stream
        Where the progress line and warnings go; ``None`` for silence.

    Raises
    ------
    BatchError
        The batch could not run at all; per-file problems are error rows instead.
    """
    options = options or BatchOptions()
    if engine not in ("local", "ray"):
        raise BatchError(f"engine must be 'local' or 'ray', got {engine!r}")
    if workers < 0:
        raise BatchError(f"workers must be >= 0 (0 = one per core), got {workers}")
    started = time.monotonic()

    def warn(message: str) -> None:
        if stream is not None:
            print(f"diarflow: {message}", file=stream)

    items, input_errors = expand_inputs(inputs, warn)
    if not items and not input_errors:
        raise BatchError("no input files found (check the paths, globs and list files given)")
    try:
        writer = BatchWriter(Path(out_dir), options.formats)
        done = writer.done_paths()
    except OSError as exc:
        raise BatchError(f"cannot use output folder {out_dir}: {exc}") from None
    todo = [item for item in items if item.path not in done]
    report = BatchReport(inputs=len(items) + len(input_errors), skipped=len(items) - len(todo))
    if report.skipped:
        warn(f"{report.skipped} of {len(items)} inputs already done in {out_dir}; skipping them")
    progress = Progress(len(todo) + len(input_errors), stream)

    def record(outcome: FileOutcome) -> None:
        writer.add(outcome)
        progress.update(outcome)
        report.processed += 1
        report.audio_s += outcome.duration_s or 0.0
        if outcome.status != "ok":
            report.failed += 1
            report.errors.append((outcome.path, outcome.error or ""))
            if stream is not None and not progress.tty:
                warn(f"{outcome.path}: {outcome.error}")

    try:
        for outcome in input_errors:
            record(outcome)
        if todo:
            if engine == "ray":
                from diarflow.ray_backend import RayUnavailable, run_batch_on_ray

                try:
                    run_batch_on_ray(todo, options, workers, ray_address, record)
                except RayUnavailable as exc:
                    raise BatchError(str(exc)) from None
            else:
                run_local(todo, options, workers or (os.cpu_count() or 1), record)
    finally:
        writer.close()
        progress.finish()
    report.wall_s = time.monotonic() - started
    return report


def batch_command(args: Any) -> int:
    """``diarflow batch``: the CLI's entry (parsed ``argparse`` arguments) -> exit status."""
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    try:
        options = BatchOptions(args.num_speakers, args.min_speakers, args.max_speakers, formats,
                               args.model_dir)
        report = run_batch(args.inputs, args.out, options, engine=args.engine, workers=args.workers,
                           ray_address=args.ray_address)
    except (BatchError, ValueError) as exc:
        print(f"diarflow: batch could not run: {exc}", file=sys.stderr)
        return 1
    rate = report.audio_s / 3600 / max(report.wall_s / 60, 1e-9)
    print(f"batch done: {report.processed - report.failed} diarized, {report.failed} failed, "
          f"{report.skipped} skipped (done earlier); {report.audio_s / 3600:.2f} h of audio in "
          f"{report.wall_s:.1f} s ({rate:.2f} h/min) -> {args.out}")
    for path, error in report.errors[:20]:
        print(f"  failed: {path}: {error}", file=sys.stderr)
    if len(report.errors) > 20:
        print(f"  ... and {len(report.errors) - 20} more (see {args.out}/files)", file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if int(text) == 0 else _positive_int(text)


def add_batch_arguments(parser: Any) -> None:
    """The ``batch`` subcommand's options (kept here so ``cli.py`` only registers the command)."""
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="files, folders, globs, http(s) URLs, or list files (.txt one per line; "
                             ".csv / .parquet with a 'path' column)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing; "
                        "a re-run skips files already done there)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help="comma-separated: rttm, json (per file), parquet (segments dataset); default all")
    parser.add_argument("--num-speakers", type=count_from_text, metavar="N",
                        help="exactly N speakers in every file; cannot be combined with --min/--max-speakers")
    parser.add_argument("--min-speakers", type=count_from_text, metavar="N",
                        help="at least N speakers per file (default: estimated from the audio)")
    parser.add_argument("--max-speakers", type=count_from_text, metavar="N",
                        help="at most N speakers per file (default: no limit)")
    parser.add_argument("--engine", choices=["local", "ray"], default="local",
                        help="local: a process pool on this machine (default); ray: Ray Data actors")
    parser.add_argument("--ray-address", default=None, metavar="ADDR",
                        help="join a running Ray cluster ('auto' or host:port); default: start a local Ray")
    parser.add_argument("--workers", type=_non_negative_int, default=0, metavar="N",
                        help="worker processes / Ray actors (default: one per core / cluster CPU)")
    parser.add_argument("--model-dir", default=None, help="model folder on the workers")
