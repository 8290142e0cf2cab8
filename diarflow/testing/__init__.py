"""Support for tests, benchmarks and notebooks run from a checkout (not needed to use diarflow): real servers on 127.0.0.1, evaluation helpers."""

from diarflow.testing.server_process import (
    ServerProcess,
    ServerThread,
    children_of,
    free_port,
    rss_bytes,
    upload,
    wait_for_job,
)

__all__ = ["ServerProcess", "ServerThread", "children_of", "free_port", "rss_bytes", "upload", "wait_for_job"]
