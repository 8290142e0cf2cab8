"""Uploaded media: team-namespaced ``media://`` keys on local disk, presigned expiring URLs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["DOWNLOAD_ROUTE", "MEDIA_KEY_RE", "UPLOAD_ROUTE", "MediaStore", "UrlSigner", "load_or_create_secret"]

# \Z, not $: "$" also matches before a trailing newline; callers use fullmatch
MEDIA_KEY_RE = re.compile(r"media://[a-zA-Z0-9\-_./]+\Z")
# the presigned URLs' routes (clients upload and download there; job workers fetch their inputs there)
UPLOAD_ROUTE = "/v1/media/upload/{token}"
DOWNLOAD_ROUTE = "/v1/media/download/{token}"


def load_or_create_secret(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (created once, mode 0600)."""
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value.hex())
    return value


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class UrlSigner:
    """Self-authorising tokens ``<payload>.<hmac>`` for presigned upload and download URLs.

    The payload names the purpose (``put``/``get``), the team, the media key and an expiry (Unix s);
    the HMAC-SHA256 uses the server secret, so a token cannot be forged or re-targeted.
    """

    secret: bytes

    def sign(self, purpose: str, team: str, key: str, ttl_s: float) -> str:
        payload = _b64(json.dumps({"p": purpose, "t": team, "k": key, "e": int(time.time() + ttl_s)},
                                  separators=(",", ":")).encode())
        mac = _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest())
        return f"{payload}.{mac}"

    def verify(self, token: str, purpose: str) -> tuple[str, str] | None:
        """``(team, key)`` of a valid, unexpired token for ``purpose``; ``None`` otherwise."""
        payload, _, mac = token.partition(".")
        try:
            expected = _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest())
            if not mac or not hmac.compare_digest(expected, mac):
                return None
            body = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError):
            return None
        if body.get("p") != purpose or float(body.get("e", 0)) < time.time():
            return None
        return str(body["t"]), str(body["k"])


class MediaStore:
    """Where uploaded objects live: ``<root>/<sha256(team)>/<sha256(key)>`` (no user text in paths)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_of(self, team: str, key: str) -> Path:
        team_dir = hashlib.sha256(team.encode()).hexdigest()[:32]
        return self.root / team_dir / hashlib.sha256(key.encode()).hexdigest()

    def temp_path_of(self, team: str, key: str) -> Path:
        final = self.path_of(team, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f"{final.name}.{secrets.token_hex(6)}.part")

    def open_temp(self, team: str, key: str) -> tuple[Path, IO[bytes]]:
        """A new ``.part`` file for an upload of ``key`` and its path (moved into place when complete)."""
        path = self.temp_path_of(team, key)
        return path, open(path, "wb")

    def remove_partial_uploads(self, older_than: float | None = None) -> int:
        """Delete ``.part`` files (all of them, or those last written before ``older_than``, Unix s).

        At start-up every ``.part`` is a leftover of an upload cut off by a crash: no upload is in
        flight yet. Returns how many were removed.
        """
        removed = 0
        for part in self.root.glob("*/*.part"):
            try:
                if older_than is None or part.stat().st_mtime < older_than:
                    part.unlink()
                    removed += 1
            except OSError:
                continue
        return removed
