"""API keys for the stream (and the job API): parsing ``DIARFLOW_API_KEYS`` and constant-time lookup."""

from __future__ import annotations

import pytest

from diarflow.servers.auth import api_keys_from_env, parse_api_keys, team_for_token


def test_parse_api_keys() -> None:
    assert parse_api_keys("key1:teamA,key2:teamB") == {"key1": "teamA", "key2": "teamB"}
    assert parse_api_keys(" key1 : teamA , ,key2") == {"key1": "teamA", "key2": "default"}
    assert parse_api_keys("") == {} and parse_api_keys(None) == {}
    assert parse_api_keys("k:team:with:colons") == {"k": "team:with:colons"}


def test_parse_api_keys_rejects_empty_key_without_echoing_secrets() -> None:
    with pytest.raises(ValueError, match="item 2") as info:
        parse_api_keys("secret-one:a,:b")
    assert "secret-one" not in str(info.value)


def test_api_keys_from_env() -> None:
    assert api_keys_from_env({"DIARFLOW_API_KEYS": "a:x"}) == {"a": "x"}
    assert api_keys_from_env({}) == {}


@pytest.mark.parametrize(("token", "team"), [("key1", "teamA"), ("key2", "teamB"), ("key", None), ("key10", None),
                                             ("", None), (None, None), ("KEY1", None), ("ключ", None)])
def test_team_for_token(token: str | None, team: str | None) -> None:
    assert team_for_token(token, {"key1": "teamA", "key2": "teamB"}) == team


def test_no_keys_means_nobody_gets_in() -> None:
    assert team_for_token("anything", {}) is None
