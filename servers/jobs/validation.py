"""Request bodies of the job API -> job parameters, or the contract's 400 ``errors`` list."""

from __future__ import annotations

from typing import Any

from yarl import URL

from diarflow.operators.merge_similarity import check_merge_similarity
from diarflow.operators.speaker_count import speaker_count_errors
from diarflow.servers.jobs.media import MEDIA_KEY_RE
from diarflow.voiceprints import DEFAULT_EXCLUSIVE, DEFAULT_THRESHOLD, decode_voiceprint

__all__ = ["ValidationFailed", "parse_diarize", "parse_identify", "parse_media_key", "parse_voiceprint"]

MODELS = frozenset({"precision-2", "community-1"})
MAX_URL_CHARS = 4096
_SPEAKER_FIELDS = ("numSpeakers", "minSpeakers", "maxSpeakers")


class ValidationFailed(Exception):
    """400: ``errors`` is ``[{"field", "message"}]``."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(e["message"] for e in errors))
        self.errors = errors


class _Checker:
    def __init__(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise ValidationFailed([{"field": "body", "message": "the request body must be a JSON object"}])
        self.body = body
        self.errors: list[dict[str, str]] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append({"field": field, "message": message})

    def get(self, field: str) -> Any:
        return self.body.get(field)

    def flag(self, field: str) -> bool:
        value = self.body.get(field)
        if value is None:
            return False
        if not isinstance(value, bool):
            self.fail(field, f"{field} must be a boolean")
            return False
        return value

    def similarity(self, field: str) -> float | None:
        """A cosine similarity in (-1, 1], or ``None`` when not set."""
        value = self.body.get(field)
        if value is None:
            return None
        try:
            return check_merge_similarity(value, field)
        except ValueError as exc:
            self.fail(field, str(exc))
            return None

    def http_url(self, field: str, required: bool) -> str | None:
        value = self.body.get(field)
        if value is None:
            if required:
                self.fail(field, f"{field} is required")
            return None
        if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
            self.fail(field, f"{field} must be a string of at most {MAX_URL_CHARS} characters")
            return None
        try:
            parsed = URL(value)
        except ValueError:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            self.fail(field, f"{field} must be an http:// or https:// URL")
            return None
        return value

    def input_url(self, field: str = "url") -> str | None:
        value = self.body.get(field)
        if isinstance(value, str) and value.startswith("media://"):
            if len(value) > 255 or not MEDIA_KEY_RE.fullmatch(value):
                self.fail(field, "media URLs must match ^media://[a-zA-Z0-9\\-_./]+$ (at most 255 characters)")
                return None
            return value
        return self.http_url(field, required=True)

    def model(self) -> str:
        value = self.body.get("model")
        if value is None:
            return "precision-2"
        if value not in MODELS:
            self.fail("model", f"model must be one of {sorted(MODELS)} or null")
        return str(value)

    def done(self) -> None:
        if self.errors:
            raise ValidationFailed(self.errors)


def parse_media_key(body: Any) -> str:
    """The ``media://`` key of a ``/v1/media/input|output`` body."""
    check = _Checker(body)
    value = check.get("url")
    if not isinstance(value, str) or len(value) > 255 or not MEDIA_KEY_RE.fullmatch(value):
        check.fail("url", "url must be media://<key> with [a-zA-Z0-9-_./] characters, at most 255 in all")
    check.done()
    return str(value)


def _common(check: _Checker) -> dict[str, Any]:
    params: dict[str, Any] = {"url": check.input_url("url"), "model": check.model(),
                              "webhook": check.http_url("webhook", required=False),
                              "webhookStatusOnly": check.flag("webhookStatusOnly")}
    return params


def _diarization_fields(check: _Checker, params: dict[str, Any]) -> None:
    num, low, high = (check.get(name) for name in _SPEAKER_FIELDS)
    for field, message in speaker_count_errors(num, low, high, _SPEAKER_FIELDS):
        check.fail(field, message)
    if check.get("transcription") is True:
        check.fail("transcription", "transcription is not supported by this server")
    elif check.get("transcription") is not None and not isinstance(check.get("transcription"), bool):
        check.fail("transcription", "transcription must be a boolean")
    params.update(numSpeakers=num, minSpeakers=low, maxSpeakers=high, confidence=check.flag("confidence"),
                  turnLevelConfidence=check.flag("turnLevelConfidence"), exclusive=check.flag("exclusive"),
                  mergeSimilarity=check.similarity("mergeSimilarity"))


def parse_diarize(body: Any) -> dict[str, Any]:
    """Parameters of a ``POST /v1/diarize`` job (``null`` = not set; unknown fields ignored)."""
    check = _Checker(body)
    params = _common(check)
    _diarization_fields(check, params)
    check.done()
    return params


def parse_voiceprint(body: Any) -> dict[str, Any]:
    """Parameters of a ``POST /v1/voiceprint`` job."""
    check = _Checker(body)
    params = _common(check)
    check.done()
    return params


def parse_identify(body: Any) -> dict[str, Any]:
    """Parameters of a ``POST /v1/identify`` job: diarization fields, ``voiceprints`` and ``matching``."""
    check = _Checker(body)
    params = _common(check)
    _diarization_fields(check, params)
    prints = check.get("voiceprints")
    clean: list[dict[str, str]] = []
    if not isinstance(prints, list) or not 1 <= len(prints) <= 50:
        check.fail("voiceprints", "voiceprints must be a list of 1 to 50 items")
    else:
        seen: set[str] = set()
        for i, item in enumerate(prints):
            field = f"voiceprints[{i}]"
            if not isinstance(item, dict):
                check.fail(field, "each voiceprint must be an object {label, voiceprint}")
                continue
            label, print_ = item.get("label"), item.get("voiceprint")
            if not isinstance(label, str) or not 1 <= len(label) <= 100:
                check.fail(f"{field}.label", "label must be a string of 1 to 100 characters")
            elif label.lower().startswith("speaker_"):
                check.fail(f"{field}.label", "label must not start with SPEAKER_")
            elif label in seen:
                check.fail(f"{field}.label", "labels must be unique")
            else:
                seen.add(label)
            if not isinstance(print_, str) or len(print_) > 20000:
                check.fail(f"{field}.voiceprint", "voiceprint must be a string of at most 20000 characters")
            else:
                try:
                    decode_voiceprint(print_)
                except ValueError as exc:
                    check.fail(f"{field}.voiceprint", str(exc))
            clean.append({"label": str(label), "voiceprint": str(print_)})
    matching = check.get("matching")
    exclusive, threshold = DEFAULT_EXCLUSIVE, DEFAULT_THRESHOLD
    if matching is not None:
        if not isinstance(matching, dict):
            check.fail("matching", "matching must be an object {exclusive, threshold}")
        else:
            if matching.get("exclusive") is not None:
                if not isinstance(matching["exclusive"], bool):
                    check.fail("matching.exclusive", "matching.exclusive must be a boolean")
                else:
                    exclusive = matching["exclusive"]
            value = matching.get("threshold")
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    check.fail("matching.threshold", "matching.threshold must be a number in [0, 100]")
                else:
                    threshold = float(value)
    check.done()
    params.update(voiceprints=clean, matching={"exclusive": exclusive, "threshold": threshold})
    return params
