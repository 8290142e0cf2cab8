"""Job API building blocks without a server: voiceprints, scores, signing, rate limits, keys, address policy."""

from __future__ import annotations

import base64
import hashlib
import hmac

import numpy as np
import pytest

from diarflow.servers.jobs.fetch import AddressPolicy, address_refused
from diarflow.servers.auth import parse_api_keys
from diarflow.servers.jobs.keys import KeyRing
from diarflow.servers.jobs.media import UrlSigner
from diarflow.servers.jobs.ratelimit import RateLimiter
from diarflow.voiceprints import decode_voiceprint, encode_voiceprint, identify, similarity_score
from diarflow.servers.jobs.webhooks import sign


def test_voiceprint_round_trip_and_rejects_foreign_strings() -> None:
    rng = np.random.default_rng(0)
    vector = rng.normal(size=192).astype(np.float32)
    text = encode_voiceprint(vector)
    assert text.startswith("dfv1:") and len(text) < 20000
    back = decode_voiceprint(text)
    assert float(back @ (vector / np.linalg.norm(vector))) > 0.9999
    for bad in ("", "dfv1:campplus-192:!!", "dfv0:" + text[5:], text[:-8], "dfv1:campplus-192:" + "A" * 512):
        with pytest.raises(ValueError):
            decode_voiceprint(bad)


def test_scores_are_monotonic_and_anchored() -> None:
    cosines = np.linspace(-1, 1, 201)
    scores = [similarity_score(float(c)) for c in cosines]
    assert scores == sorted(scores) and scores[0] == 0 and scores[-1] == 100
    assert similarity_score(0.45) == 50 and similarity_score(0.2) < 5 and similarity_score(0.7) > 95


def test_identify_exclusive_matching() -> None:
    rng = np.random.default_rng(1)
    a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 192)).astype(np.float32))
    diarization = {"diarization": [{"speaker": "SPEAKER_00", "start": 0.0, "end": 1.0},
                                   {"speaker": "SPEAKER_01", "start": 1.0, "end": 2.0}]}
    prints = [{"label": "Ann", "voiceprint": encode_voiceprint(a)}, {"label": "Bob", "voiceprint": encode_voiceprint(b)}]
    # both speakers sound like Ann; exclusive matching gives Ann to the closer one only
    near_a = a + 0.05 * b
    out = identify(diarization, {"SPEAKER_00": near_a / np.linalg.norm(near_a), "SPEAKER_01": a}, prints[:1],
                   exclusive=True, threshold=50)
    assert [r["match"] for r in out["identification"]] == [None, "Ann"]
    assert [r["speaker"] for r in out["identification"]] == ["SPEAKER_00", "Ann"]
    out = identify(diarization, {"SPEAKER_00": near_a / np.linalg.norm(near_a), "SPEAKER_01": a}, prints[:1],
                   exclusive=False, threshold=50)
    assert [r["match"] for r in out["identification"]] == ["Ann", "Ann"]
    out = identify(diarization, {"SPEAKER_00": b, "SPEAKER_01": a}, prints, exclusive=True, threshold=101)
    assert all(v["match"] is None for v in out["voiceprints"])
    assert out["voiceprints"][0]["confidence"] == {"Ann": similarity_score(float(a @ b)), "Bob": 100}


def test_webhook_signature_matches_contract() -> None:
    body, ts = b'{"jobId":"x","status":"succeeded"}', 1700000000
    expected = base64.b64encode(hmac.new(b"s3cret", b"v0:1700000000:" + body, hashlib.sha256).digest()).decode()
    assert sign(b"s3cret", ts, body) == expected
    assert sign(b"s3cret", ts, body, "hex") == base64.b64decode(expected).hex()


def test_signed_urls_expire_and_cannot_be_retargeted() -> None:
    signer = UrlSigner(b"k" * 32)
    token = signer.sign("put", "teamA", "media://a.wav", 60)
    assert signer.verify(token, "put") == ("teamA", "media://a.wav")
    assert signer.verify(token, "get") is None
    assert UrlSigner(b"z" * 32).verify(token, "put") is None
    assert signer.verify(signer.sign("put", "teamA", "media://a.wav", -1), "put") is None
    payload, mac = token.split(".")
    assert signer.verify(payload[:-2] + "xx." + mac, "put") is None


def test_sliding_window() -> None:
    now = [1000.0]
    limiter = RateLimiter(60.0, clock=lambda: now[0])
    verdicts = [limiter.check("k", "GET /x", 3) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts[:3]] == [2, 1, 0] and verdicts[3].retry_after_s == 60
    assert limiter.check("k", "POST /y", 3).allowed and limiter.check("other", "GET /x", 3).allowed
    now[0] += 60.5
    assert limiter.check("k", "GET /x", 3).allowed


def test_keys_and_teams() -> None:
    assert parse_api_keys("k1:teamA, k2:teamB") == {"k1": "teamA", "k2": "teamB"}
    ring = KeyRing(True, {"k1": "teamA"})
    assert ring.team_of("Bearer k1") == "teamA"
    assert ring.team_of("Bearer k2") is None and ring.team_of(None) is None and ring.team_of("k1") is None
    assert KeyRing(False).team_of(None) == "default" and KeyRing(False).team_of("Bearer x") == "default"


@pytest.mark.parametrize("address, refused", [
    ("127.0.0.1", True), ("10.0.0.1", True), ("172.16.5.4", True), ("192.168.1.1", True), ("169.254.169.254", True),
    ("224.0.0.251", True), ("0.0.0.0", True), ("::1", True), ("fe80::1", True), ("fc00::1", True),
    ("::ffff:127.0.0.1", True), ("100.64.0.1", True), ("8.8.8.8", False), ("2001:4860:4860::8888", False),
])
def test_address_policy(address: str, refused: bool) -> None:
    assert address_refused(address) is refused
    assert AddressPolicy(allow_private=True).refuses(address) is False


def test_length_limit_message() -> None:
    from diarflow.servers.jobs.probe import too_long_message

    assert too_long_message(24 * 3600.0) == "Audio is longer than 24 h"
    assert too_long_message(30.0) == "Audio is longer than 30 s"
    assert too_long_message(90.5) == "Audio is longer than 90.5 s"


def test_rate_limiter_memory_is_bounded_whatever_the_keys() -> None:
    limiter = RateLimiter(60.0, clock=lambda: 1000.0, max_windows=100)
    for n in range(10_000):
        limiter.check(f"junk-{n}", "GET /v1/test", 5)
    assert len(limiter) == 100
    assert limiter.check("junk-9999", "GET /v1/test", 5).remaining == 3  # the most recent windows are kept


def test_one_key_is_one_caller_however_the_header_is_spelled() -> None:
    ring = KeyRing(True, {"k1": "teamA"})
    callers = {ring.caller_of(h) for h in ("Bearer k1", "bearer k1", "BEARER  k1", " Bearer k1 ")}
    assert len(callers) == 1 and next(iter(callers)) is not None
    assert ring.caller_of("Bearer \udcff\udcfek1") is None  # undecodable header bytes: refused, no crash


def test_access_log_targets_are_redacted() -> None:
    from diarflow.servers.access_log import redact_target

    assert redact_target("/diarize/stream?token=s3cret&x=1") == "/diarize/stream?token=***&x=1"
    assert redact_target("/v1/media/upload/eyJwIjoi.c2ln?x=1") == "/v1/media/upload/***?x=1"
    assert redact_target("/v1/media/download/abc") == "/v1/media/download/***"
    assert redact_target("/v1/jobs/123?status=failed") == "/v1/jobs/123?status=failed"


def test_close_reason_is_valid_utf8_within_123_bytes() -> None:
    from diarflow.servers.stream import close_reason

    for text in ("é" * 100, "😀" * 40, "a" * 200, "ok"):
        reason = close_reason(text)
        assert len(reason) <= 123 and text.startswith(reason.decode("utf-8"))


def test_workers_fetch_from_the_public_url_or_one_derived_from_host_and_port() -> None:
    from diarflow.servers.state import ServerSettings

    assert ServerSettings(host="127.0.0.1", port=8000).base_url == "http://127.0.0.1:8000"
    assert ServerSettings(host="0.0.0.0", port=9000).base_url == "http://127.0.0.1:9000"
    assert ServerSettings(host="::1", port=8000).base_url == "http://[::1]:8000"
    assert ServerSettings(public_url="https://diarflow.lan/api/").base_url == "https://diarflow.lan/api"
    for bad in ("10.0.0.5:8000", "ftp://host", "http://host/?x=1", "http:///path"):
        with pytest.raises(ValueError, match="public_url"):
            ServerSettings(public_url=bad)
