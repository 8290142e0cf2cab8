"""``diarflow batch``: inputs, error rows, resume, parity with ``diarize``, on local processes and on a real local Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from aiohttp import web

from diarflow.api import diarize
from diarflow.batch import (FILES_SCHEMA, SEGMENTS_SCHEMA, BatchOptions, BatchWriter, expand_inputs,
                            run_batch)
from diarflow.provisioning import ModelPaths
from diarflow.operators.models import Resources
from diarflow.testing.evaluation import DevItem
from diarflow.testing.server_process import free_port


def _clip(item: DevItem, seconds: float, dest: Path) -> Path:
    audio, rate = sf.read(item.audio_path, dtype="float32")
    sf.write(dest, audio[: int(seconds * rate)], rate, format="WAV", subtype="PCM_16")
    return dest


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, speech_clips: dict[str, DevItem]) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [_clip(speech_clips[name], 25.0, folder / f"{name}.wav")
            for name in ("two_speakers", "six_speakers", "three_speakers")]


@pytest.fixture(scope="module")
def ray_cluster(model_paths: ModelPaths) -> Iterator[str]:
    """A real local Ray (2 CPUs, 127.0.0.1), started for this module and shut down after it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             _node_ip_address="127.0.0.1")
    try:
        yield str(ray.get_runtime_context().gcs_address)
    finally:
        ray.shutdown()


class _Http:
    """127.0.0.1 file server: ``/files/<name>`` from a folder, 404 for anything else."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        import asyncio

        async def handler(request: web.Request) -> web.StreamResponse:
            path = self.root / request.match_info["name"]
            return web.FileResponse(path) if path.is_file() else web.Response(status=404)

        async def main() -> None:
            app = web.Application()
            app.router.add_get("/files/{name}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._loop_ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    def start(self) -> _Http:
        self._thread.start()
        self._loop_ready.wait(10)
        return self

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}"


def _files(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in BatchWriter(out, ("rttm",)).read_files().to_pylist()}


def test_inputs_folders_globs_lists_and_bad_lines(tmp_path: Path, clips: list[Path]) -> None:
    folder = clips[0].parent
    (tmp_path / "list.txt").write_text(f"# a comment\n{clips[0]}\n\nftp://host/x.wav\n{clips[0].name}\n")
    pq.write_table(pa.table({"path": [str(clips[1]), None]}), tmp_path / "list.parquet")
    (tmp_path / "nopath.csv").write_text("file\nx.wav\n")
    items, errors = expand_inputs([str(folder), str(folder / "*.wav"), str(tmp_path / "list.txt"),
                                   str(tmp_path / "list.parquet"), str(tmp_path / "nopath.csv"), "missing.wav"])
    assert [i.path for i in items] == [str(c) for c in sorted(clips)] + [str(tmp_path / "two_speakers.wav"),
                                                                       os.path.abspath("missing.wav")]
    assert [i.uri for i in items][:2] == ["six_speakers", "three_speakers"]
    assert items[2].uri.startswith("two_speakers-") and items[3].uri.startswith("two_speakers-")
    assert len({i.uri for i in items}) == len(items)  # two two_speakers.wav: their uris get a hash suffix
    messages = sorted(e.error or "" for e in errors)
    assert any("unsupported URL scheme" in m for m in messages) and any("empty path" in m for m in messages)
    assert any("no 'path' column" in m for m in messages) and len(errors) == 3
    with pytest.raises(ValueError, match="num_speakers cannot be combined"):
        BatchOptions(num_speakers=2, max_speakers=3)


def test_local_batch_error_rows_resume_and_parity(tmp_path: Path, clips: list[Path], resources: Resources,
                                                  model_paths: ModelPaths) -> None:
    (tmp_path / "notes.wav").write_text("not audio\n" * 50)
    served = _Http(clips[0].parent).start()
    out = tmp_path / "out"
    options = BatchOptions(model_dir=str(model_paths.campplus.parent))
    first = run_batch([str(clips[0]), str(tmp_path / "notes.wav"), str(tmp_path / "gone.wav"),
                       served.url("nothing.wav")], out, options, workers=2, stream=None)
    assert (first.processed, first.failed) == (4, 3)
    rows = _files(out)
    assert rows[str(clips[0])]["status"] == "ok" and rows[str(clips[0])]["speakers"] >= 1
    assert "file not found" in rows[str(tmp_path / "gone.wav")]["error"]
    assert "HTTP 404" in rows[served.url("nothing.wav")]["error"]
    assert rows[str(tmp_path / "notes.wav")]["status"] == "error"
    # resume: the done file is skipped, the failures are tried again, a URL input is decoded by the worker
    second = run_batch([str(clips[0]), str(tmp_path / "notes.wav"), served.url(clips[1].name)], out, options,
                       workers=2, stream=None)
    assert (second.skipped, second.processed, second.failed) == (1, 2, 1)
    rows = _files(out)
    assert rows[served.url(clips[1].name)]["status"] == "ok"
    segments = pq.read_table(out / "segments", schema=SEGMENTS_SCHEMA)
    assert segments.schema == SEGMENTS_SCHEMA and pq.read_table(out / "files", schema=FILES_SCHEMA).num_rows == 6
    for clip in clips[:2]:  # same RTTM as diarize, and each file's segments exactly once
        expected = diarize(clip, resources=resources)
        assert (out / f"{clip.stem}.rttm").read_text() == expected.to_rttm()
        mine = segments.filter(pa.compute.equal(segments.column("uri"), clip.stem))
        assert mine.column("start_s").to_pylist() == [s.start_s for s in expected.segments]


def test_cli_exit_codes_and_unreachable_ray(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "diarflow.cli", "batch"]
    nothing = subprocess.run(cli + [str(tmp_path / "*.flac"), "--out", str(tmp_path / "o")],
                             capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 1 and "no input files found" in nothing.stderr
    started = time.monotonic()
    unreachable = subprocess.run(cli + [str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--engine", "ray",
                                        "--ray-address", f"127.0.0.1:{free_port()}"],
                                 capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 1 and "cannot reach a Ray cluster" in unreachable.stderr, unreachable.stderr
    assert time.monotonic() - started < 30
    bad_format = subprocess.run(cli + [str(tmp_path / "a.wav"), "--out", str(tmp_path / "o"), "--format", "mp4"],
                                capture_output=True, text=True, timeout=60)
    assert bad_format.returncode == 1 and "formats must be" in bad_format.stderr


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if b"MapBatches(_BatchActor)" in cmdline and ") Z" not in stat:
                pids.append(int(entry.name))
    return pids


def test_ray_batch_matches_local_and_survives_a_killed_actor(tmp_path: Path, clips: list[Path], ray_cluster: str,
                                                             model_paths: ModelPaths) -> None:
    options = BatchOptions(model_dir=str(model_paths.campplus.parent))
    local = run_batch([str(c) for c in clips], tmp_path / "local", options, workers=2, stream=None)
    assert local.failed == 0
    served = _Http(clips[0].parent).start()
    inputs = [str(c) for c in clips] + [served.url("missing.wav"), str(tmp_path / "gone.wav")]
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one_actor_mid_batch() -> None:  # after the first file is written, kill the actor at work
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not killed:
            if list(out.glob("*.rttm")) and (pids := _actor_pids()):
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor_mid_batch, daemon=True)
    killer.start()
    report = run_batch(inputs, out, options, engine="ray", workers=1, ray_address=ray_cluster, stream=None)
    killer.join()
    assert killed, "no actor was killed: the test did not exercise a crash"
    rows = _files(out)
    assert len(rows) == 5 and report.processed == 5
    assert all(rows[str(c)]["status"] == "ok" for c in clips), rows  # the killed file was retried
    assert "HTTP 404" in rows[served.url("missing.wav")]["error"]
    assert "file not found" in rows[str(tmp_path / "gone.wav")]["error"]
    for clip in clips:
        assert (out / f"{clip.stem}.rttm").read_text() == (tmp_path / "local" / f"{clip.stem}.rttm").read_text()
    assert pq.read_table(out / "segments").num_rows == pq.read_table(tmp_path / "local" / "segments").num_rows
    again = run_batch(inputs, out, options, engine="ray", workers=1, ray_address=ray_cluster, stream=None)
    assert again.skipped == 3 and again.processed == 2  # only the two failures are tried again


def test_missing_ray_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from diarflow import ray_backend

    real_import = builtins.__import__

    def no_ray(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ray_backend.RayUnavailable, match=r"pip install 'diarflow\[ray\]'"):
        ray_backend.connect(None, 1)


def test_only_one_module_imports_ray() -> None:
    root = Path(__file__).parent.parent
    importers = [str(p.relative_to(root)) for folder in ("diarflow", "servers", "operators", "dataflow")
                 for p in (root / folder).rglob("*.py")
                 if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())]
    assert importers == ["diarflow/ray_backend.py"]
    fresh = subprocess.run([sys.executable, "-c", "import sys, diarflow.batch, diarflow.cli, "
                            "diarflow.servers.jobs.runner; print('ray' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert fresh.stdout.strip() == "False", fresh.stderr
