"""Benchmark of ``diarflow batch`` (local processes vs Ray Data) and of the job API's two worker backends.

Prints, on 20 dev files (the 15 of ``../shared/eval/dev`` and ``dev-channels``, the first 5 again):

* throughput (hours of audio per wall-clock minute) of ``--engine local`` and ``--engine ray`` with one
  worker / actor per core, and Ray's overhead against local (with and without starting a local Ray);
* whether every file's RTTM equals ``diarize``'s (both engines);
* peak RSS per worker process / actor, and the startup cost of a local Ray;
* the job API with 20 queued jobs: ``--workers ray`` vs local worker processes (same outputs, throughput).

Run: ``python -m tools.bench_batch [--skip-jobs]`` (a few minutes on 2 cores). Without the dev corpus it
prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from tools import exit_without_dev_corpus
from diarflow.testing.evaluation import default_dev_dir

FILES = 20


def _load() -> str:
    """The machine's load average (1, 5, 15 min): the machine is shared, so every number is printed with it."""
    one, five, fifteen = os.getloadavg()
    return f"[load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores]"


def _dev_files() -> list[Path]:
    dev_dir = default_dev_dir()
    return sorted(dev_dir.glob("*.flac")) + sorted((dev_dir.parent / "dev-channels").glob("*.flac"))


class _PeakRss:
    """Samples VmHWM (peak RSS) of processes whose command line contains ``marker`` or whose parent is
    ``parent_pid``, every 0.2 s, in a thread."""

    def __init__(self, marker: bytes | None = None, parent_pid: int | None = None) -> None:
        self.marker = marker
        self.parent_pid = parent_pid
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                    stat = (entry / "stat").read_text()
                    status = (entry / "status").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if (self.marker and self.marker in cmdline) or (self.parent_pid and ppid == self.parent_pid
                                                                and b"spawn_main" in cmdline):
                    for line in status.splitlines():
                        if line.startswith("VmHWM:"):
                            self.peaks[int(entry.name)] = max(self.peaks.get(int(entry.name), 0),
                                                              int(line.split()[1]) * 1024)
            self._stop.wait(0.2)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        if not self.peaks:
            return "n/a"
        return ", ".join(f"{v / 1e6:.0f}" for v in sorted(self.peaks.values())) + " MB"


def _same_rttm(out: Path, expected: dict[str, str]) -> str:
    same = sum((out / f"{uri}.rttm").is_file() and (out / f"{uri}.rttm").read_text() == text
               for uri, text in expected.items())
    return f"{same}/{len(expected)} files identical to diarize"


def bench_batch(inputs: list[Path], workers: int) -> None:
    from diarflow.api import diarize
    from diarflow.batch import BatchOptions, expand_inputs, run_batch
    from diarflow.ray_backend import connect

    items, _ = expand_inputs([str(p) for p in inputs])
    started = time.perf_counter()
    expected = {i.uri: diarize(i.path, uri=i.uri).to_rttm() for i in items}
    print(f"reference: diarize() in-process on {len(items)} files: {time.perf_counter() - started:.1f} s {_load()}")
    options = BatchOptions(formats=("rttm", "parquet"))
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        with _PeakRss(parent_pid=os.getpid()) as local_rss:
            local = run_batch([str(p) for p in inputs], Path(tmp) / "local", options, workers=workers, stream=None)
        local_rate = local.audio_s / 3600 / (local.wall_s / 60)
        print(f"batch --engine local --workers {workers}: {local.processed} files, {local.audio_s / 3600:.3f} h of "
              f"audio in {local.wall_s:.1f} s = {local_rate:.2f} h/min; {_same_rttm(Path(tmp) / 'local', expected)}; "
              f"peak RSS per worker {local_rss.summary()} {_load()}")

        t0 = time.perf_counter()
        connection = connect(None, workers)
        startup_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        connection.close()
        print(f"local Ray: ray.init(num_cpus={workers}) {startup_s:.1f} s, shutdown {time.perf_counter() - t0:.1f} s "
              f"{_load()}")

        with _PeakRss(marker=b"MapBatches(_BatchActor)") as ray_rss:
            ray = run_batch([str(p) for p in inputs], Path(tmp) / "ray", options, engine="ray", workers=workers,
                            stream=None)
        ray_rate = ray.audio_s / 3600 / (ray.wall_s / 60)
        without_startup = ray.audio_s / 3600 / (max(ray.wall_s - startup_s, 1e-9) / 60)
        print(f"batch --engine ray --workers {workers}: {ray.processed} files, {ray.audio_s / 3600:.3f} h of audio "
              f"in {ray.wall_s:.1f} s = {ray_rate:.2f} h/min ({without_startup:.2f} h/min without the "
              f"{startup_s:.1f} s Ray start); {_same_rttm(Path(tmp) / 'ray', expected)}; peak RSS per actor "
              f"{ray_rss.summary()} {_load()}")
        print(f"Ray overhead vs local: {(ray.wall_s / local.wall_s - 1) * 100:+.1f} % wall-clock "
              f"({(max(ray.wall_s - startup_s, 1e-9) / local.wall_s - 1) * 100:+.1f} % without the Ray start) "
              f"[target <= 15 %]")
        cpu_s = local.wall_s * workers
        print(f"per core: {local.audio_s / 3600 / (cpu_s / 3600):.0f} h of audio per core-hour (local, "
              f"{workers} workers incl. model loading)")


async def _jobs_run(backend: str, inputs: list[Path], workers: int, tmp: Path) -> tuple[float, float, dict[str, object]]:
    import aiohttp

    from diarflow.testing.server_process import ServerProcess, upload, wait_for_job

    t0 = time.perf_counter()
    server = ServerProcess(tmp / backend, jobs={"workers": workers, "backend": backend, "rate_limit_get": 100_000,
                                                "rate_limit_post": 100_000}).start(timeout_s=180)
    start_s = time.perf_counter() - t0
    try:
        async with aiohttp.ClientSession(server.url) as api:
            for n, path in enumerate(inputs):
                await upload(api, f"media://bench/{n:02d}{path.suffix}", path)
            started = time.perf_counter()
            ids = []
            for n, path in enumerate(inputs):
                response = await api.post("/v1/diarize", json={"url": f"media://bench/{n:02d}{path.suffix}"})
                ids.append((await response.json())["jobId"])
            outputs = {}
            for n, job_id in enumerate(ids):
                job = await wait_for_job(api, job_id, 900, period_s=0.5)
                outputs[str(n)] = job.get("output")
            wall_s = time.perf_counter() - started
    finally:
        server.stop()
    return wall_s, start_s, outputs


def bench_jobs(inputs: list[Path], workers: int) -> None:
    from diarflow.audio import probe_duration_s

    audio_h = sum(probe_duration_s(p) or 0.0 for p in inputs) / 3600
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        results = {}
        for backend in ("local", "ray"):
            wall_s, start_s, outputs = asyncio.run(_jobs_run(backend, inputs, workers, Path(tmp)))
            results[backend] = (wall_s, outputs)
            print(f"job API --workers {backend} ({workers} workers): {len(inputs)} queued jobs, {audio_h:.3f} h of "
                  f"audio in {wall_s:.1f} s = {audio_h / (wall_s / 60):.2f} h/min (server start {start_s:.1f} s) "
                  f"{_load()}")
        same = sum(json.dumps(results["local"][1][k], sort_keys=True) == json.dumps(results["ray"][1][k], sort_keys=True)
                   for k in results["local"][1])
        ratio = results["ray"][0] / results["local"][0]
        print(f"job API ray vs local: {same}/{len(inputs)} outputs identical; ray wall-clock {(ratio - 1) * 100:+.1f} % "
              f"[target within 15 %]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-jobs", action="store_true", help="only the batch part")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    exit_without_dev_corpus("bench_batch")
    files = _dev_files()
    try:
        import ray  # noqa: F401
    except ImportError:
        print("bench_batch: Ray is not installed (pip install 'diarflow[ray]'); nothing to compare")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-inputs-") as tmp:
        inputs = []
        for n in range(FILES):  # 20 distinct inputs: the 15 files, then the first 5 again under new names
            source = files[n % len(files)]
            dest = Path(tmp) / (source.stem + (f"_r{n // len(files)}" if n >= len(files) else "") + source.suffix)
            shutil.copyfile(source, dest)
            inputs.append(dest)
        print(f"bench_batch: {len(inputs)} files from {default_dev_dir().parent}, {args.workers} workers, "
              f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
        bench_batch(inputs, args.workers)
        if not args.skip_jobs:
            bench_jobs(inputs, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
