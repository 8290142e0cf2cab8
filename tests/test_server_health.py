"""The server starts with embedded defaults and answers on 127.0.0.1 (real sockets)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from aiohttp.test_utils import TestClient

from diarflow.provisioning import ModelPaths
from diarflow.servers.app import ServerSettings, make_app
from diarflow.testing import free_port


async def test_health_route(aiohttp_client, model_paths: ModelPaths) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = await aiohttp_client(make_app(ServerSettings(model_dir=model_paths.campplus.parent)))
    response = await client.get("/health")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ok" and body["models_loaded"] is True


def test_serve_command_answers_on_loopback(model_paths: ModelPaths) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "diarflow.cli", "serve", "--port", str(port),
                             "--model-dir", str(model_paths.campplus.parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    assert json.loads(response.read())["status"] == "ok"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "server did not answer within 60 s"
                time.sleep(0.3)
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) is not None
