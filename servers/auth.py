"""API keys of both doors (job API bearer, live ``?token=``): one parser, one source, constant-time lookup.

Keys come from the settings, else ``$DIARFLOW_API_KEYS``, plus the file named by ``$DIARFLOW_API_KEYS_FILE``.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path
from typing import Mapping

__all__ = ["API_KEYS_ENV", "API_KEYS_FILE_ENV", "DEFAULT_TEAM", "api_keys_from_env", "configured_api_keys",
           "parse_api_keys", "team_for_token"]

API_KEYS_ENV = "DIARFLOW_API_KEYS"
API_KEYS_FILE_ENV = "DIARFLOW_API_KEYS_FILE"
DEFAULT_TEAM = "default"


def parse_api_keys(text: str | None) -> dict[str, str]:
    """Parse ``"key1:teamA,key2:teamB"`` into ``{"key1": "teamA", "key2": "teamB"}``.

    Parameters
    ----------
    text
        ``key:team`` pairs separated by commas or newlines; whitespace around items is ignored, empty
        items and lines starting with ``#`` are skipped. A pair without ``:`` gets the team
        ``"default"``. ``None`` or ``""`` -> ``{}``.

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
    for position, item in enumerate((text or "").replace("\n", ",").split(","), 1):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key, sep, team = item.partition(":")
        key, team = key.strip(), team.strip()
        if not key:
            raise ValueError(f"{API_KEYS_ENV}: item {position} has an empty key; expected key:team")
        keys[key] = team if sep and team else DEFAULT_TEAM
    return keys


def api_keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The keys of ``$DIARFLOW_API_KEYS`` plus those of the file ``$DIARFLOW_API_KEYS_FILE`` (``{}`` if unset).

    Raises
    ------
    ValueError
        A malformed entry, or a keys file that cannot be read (the message names the file, never a key).
    """
    env = os.environ if environ is None else environ
    keys = parse_api_keys(env.get(API_KEYS_ENV))
    keys_file = env.get(API_KEYS_FILE_ENV)
    if keys_file:
        try:
            text = Path(keys_file).read_text()
        except OSError as exc:
            raise ValueError(f"{API_KEYS_FILE_ENV}: cannot read {keys_file}: {exc.strerror}") from None
        keys.update(parse_api_keys(text))
    return keys


def configured_api_keys(configured: Mapping[str, str] | None,
                        environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The keys both doors accept: ``configured`` (the settings) if given, else the environment's."""
    return dict(configured) if configured else api_keys_from_env(environ)


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
