"""API keys -> teams for the job API (``DIARFLOW_API_KEYS="key1:teamA,key2:teamB"`` or a keys file)."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

__all__ = ["KeyRing", "parse_api_keys", "DEFAULT_TEAM"]

DEFAULT_TEAM = "default"


def parse_api_keys(text: str) -> dict[str, str]:
    """``"key1:teamA,key2:teamB"`` (commas or newlines; ``#`` comments) -> ``{key: team}``.

    Raises
    ------
    ValueError
        An entry without ``:``, or with an empty key or team (the message never shows the key).
    """
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.replace("\n", ",").split(","), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        key, sep, team = entry.rpartition(":")
        if not sep or not key.strip() or not team.strip():
            raise ValueError(f"API key entry {number} must look like 'key:team' (key not shown)")
        keys[key.strip()] = team.strip()
    return keys


@dataclass(frozen=True)
class KeyRing:
    """Resolves a bearer key to its team; with auth off everything is team ``default``."""

    enabled: bool
    keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, enabled: bool, configured: Mapping[str, str] | None = None) -> KeyRing:
        """Keys given in the settings, else ``DIARFLOW_API_KEYS``, plus the file ``DIARFLOW_API_KEYS_FILE``.

        The shared parser of ``servers/auth.py`` is used when present (one syntax for every endpoint).
        """
        try:
            from diarflow.servers.auth import parse_api_keys as parse
        except ImportError:
            parse = parse_api_keys
        keys = dict(configured) if configured else parse(os.environ.get("DIARFLOW_API_KEYS", ""))
        keys_file = os.environ.get("DIARFLOW_API_KEYS_FILE")
        if keys_file:
            keys.update(parse(Path(keys_file).read_text().replace("\n", ",")))
        return cls(enabled, keys)

    def team_of(self, authorization: str | None) -> str | None:
        """The team of an ``Authorization`` header value, or ``None`` when it must be refused (401)."""
        if not self.enabled:
            return DEFAULT_TEAM
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        presented = authorization[7:].strip().encode()
        team = None
        for key, owner in self.keys.items():  # compare against every key in constant time
            if hmac.compare_digest(key.encode(), presented):
                team = owner
        return team
