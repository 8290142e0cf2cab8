"""Bearer keys of the job API -> teams (parsing and lookup are ``servers/auth.py``'s, shared with the stream)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping

from diarflow.servers.auth import DEFAULT_TEAM, configured_api_keys, team_for_token

__all__ = ["Caller", "KeyRing", "DEFAULT_TEAM", "bearer_token"]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (scheme case-insensitive, spaces ignored)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its team and a non-secret id of its key (the rate-limit identity)."""

    team: str
    key_id: str


@dataclass(frozen=True)
class KeyRing:
    """Resolves a bearer key to its team; with auth off everything is team ``default``."""

    enabled: bool
    keys: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, enabled: bool, configured: Mapping[str, str] | None = None) -> KeyRing:
        """Keys given in the settings, else ``DIARFLOW_API_KEYS`` plus the file ``DIARFLOW_API_KEYS_FILE``."""
        return cls(enabled, configured_api_keys(configured))

    def caller_of(self, authorization: str | None) -> Caller | None:
        """The caller presenting this ``Authorization`` value, or ``None`` when it must be refused (401).

        However the header is spelled (``bearer``, extra spaces), one key is one caller.
        """
        if not self.enabled:
            return Caller(DEFAULT_TEAM, DEFAULT_TEAM)
        token = bearer_token(authorization)
        team = team_for_token(token, self.keys)
        if token is None or team is None:
            return None
        key_id = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return Caller(team, key_id)

    def team_of(self, authorization: str | None) -> str | None:
        """The team of an ``Authorization`` header value, or ``None`` when it must be refused (401)."""
        caller = self.caller_of(authorization)
        return caller.team if caller is not None else None
