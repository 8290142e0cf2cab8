"""API keys: parse ``DIARFLOW_API_KEYS`` and check a presented token in constant time (job API and stream)."""

from __future__ import annotations

import hmac
import os
from typing import Mapping

__all__ = ["API_KEYS_ENV", "api_keys_from_env", "parse_api_keys", "team_for_token"]

API_KEYS_ENV = "DIARFLOW_API_KEYS"


def parse_api_keys(text: str | None) -> dict[str, str]:
    """Parse ``"key1:teamA,key2:teamB"`` into ``{"key1": "teamA", "key2": "teamB"}``.

    Parameters
    ----------
    text
        Comma-separated ``key:team`` pairs; whitespace around items is ignored, empty items are
        skipped. A pair without ``:`` gets the team ``"default"``. ``None`` or ``""`` -> ``{}``.

    Raises
    ------
    ValueError
        An item has an empty key. The message never contains a key.

    Examples
    --------
    >>> parse_api_keys("k1:alpha, k2:beta")
    {'k1': 'alpha', 'k2': 'beta'}
    """
    keys: dict[str, str] = {}
    for position, item in enumerate((text or "").split(","), 1):
        item = item.strip()
        if not item:
            continue
        key, sep, team = item.partition(":")
        key, team = key.strip(), team.strip()
        if not key:
            raise ValueError(f"{API_KEYS_ENV}: item {position} has an empty key; expected key:team")
        keys[key] = team if sep and team else "default"
    return keys


def api_keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The API keys configured in ``$DIARFLOW_API_KEYS`` (``{}`` if unset)."""
    env = os.environ if environ is None else environ
    return parse_api_keys(env.get(API_KEYS_ENV))


def team_for_token(token: str | None, keys: Mapping[str, str]) -> str | None:
    """The team owning ``token``, or ``None`` if it matches no key.

    Every key is compared with :func:`hmac.compare_digest` (no early exit on the first match), so
    the time taken does not reveal which prefix or which key came close.
    """
    if not token:
        return None
    presented = token.encode("utf-8", "surrogateescape")
    found: str | None = None
    for key, team in keys.items():
        if hmac.compare_digest(presented, key.encode("utf-8", "surrogateescape")):
            found = team
    return found
