"""Test and benchmark support (not used by the library at run time): real servers on 127.0.0.1."""

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
