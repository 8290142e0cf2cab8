"""aiohttp access log lines with credentials redacted (``?token=``, presigned URL tokens; never headers)."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

__all__ = ["RedactingAccessLogger", "redact_target"]

_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|key|api_key|apikey|signature)=)[^&#]*")
_PRESIGNED_PATH = re.compile(r"(/v1/media/(?:upload|download)/)[^/?#]+")
REDACTED = "***"


def redact_target(target: str) -> str:
    """The request target with secret query values and presigned tokens replaced by ``***``.

    Examples
    --------
    >>> redact_target("/diarize/stream?token=abc&x=1")
    '/diarize/stream?token=***&x=1'
    """
    target = _PRESIGNED_PATH.sub(lambda m: m.group(1) + REDACTED, target)
    return _SECRET_QUERY.sub(lambda m: m.group(1) + REDACTED, target)


class RedactingAccessLogger(AbstractAccessLogger):
    """One line per request: client address, method, redacted target, status, bytes, milliseconds.

    No request header is logged, so ``Authorization`` never reaches the log.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        target = request.raw_path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        self.logger.info('%s "%s %s" %d %d %.1fms', request.remote, request.method, redact_target(target),
                         response.status, response.body_length, time * 1000.0)
