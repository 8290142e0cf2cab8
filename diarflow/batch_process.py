"""One file's work, wherever an engine runs it: fetch (URLs), diarize, and describe the outcome."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from diarflow.batch_inputs import is_url
from diarflow.batch_records import BatchItem, BatchOptions, FileOutcome

__all__ = ["process_file"]


class _DownloadError(Exception):
    pass


def _download(url: str, dest: Path, timeout_s: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "diarflow-batch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response, open(dest, "wb") as out:
            shutil.copyfileobj(response, out, 1 << 20)
    except urllib.error.HTTPError as exc:
        raise _DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _DownloadError(f"could not download {url}: {reason}") from None


def process_file(item: BatchItem, options: BatchOptions, resources: Any = None) -> FileOutcome:
    """Diarize one input (a URL is downloaded to a temporary file first); never raises.

    Parameters
    ----------
    item
        The input.
    options
        Speaker constraints and formats.
    resources
        Loaded models (:class:`diarflow.operators.models.Resources`); ``None``: once per process.

    Returns
    -------
    FileOutcome
        ``status="ok"`` with the RTTM / JSON text and the segments, or ``"error"`` with a message.
    """
    from diarflow.api import diarize
    from diarflow.audio import AudioDecodeError

    started = time.perf_counter()
    scratch: tempfile.TemporaryDirectory[str] | None = None
    try:
        if is_url(item.path):
            scratch = tempfile.TemporaryDirectory(prefix="diarflow-batch-")
            local = Path(scratch.name) / "input"
            _download(item.path, local, options.url_timeout_s)
        else:
            local = Path(item.path)
            if not local.is_file():
                raise FileNotFoundError(f"file not found: {item.path}")
        result = diarize(local, num_speakers=options.num_speakers, min_speakers=options.min_speakers,
                         max_speakers=options.max_speakers, resources=resources, uri=item.uri)
    except (AudioDecodeError, FileNotFoundError, _DownloadError, ValueError, OSError) as exc:
        message = str(exc).replace(str(scratch.name) + "/input", item.path) if scratch else str(exc)
        return FileOutcome.failed(item, message, time.perf_counter() - started)
    except Exception as exc:  # one broken file is an error row, never a dead batch
        return FileOutcome.failed(item, f"{type(exc).__name__}: {exc}", time.perf_counter() - started)
    finally:
        if scratch is not None:
            scratch.cleanup()
    segments = tuple((s.start_s, s.end_s, s.speaker, s.confidence.get(s.speaker)) for s in result.segments)
    return FileOutcome(
        item.uri, item.path, "ok", None, result.duration_s, len(result.speakers), time.perf_counter() - started,
        result.to_rttm() if "rttm" in options.formats else None,
        json.dumps(result.to_json(), indent=1) if "json" in options.formats else None,
        segments,
    )
