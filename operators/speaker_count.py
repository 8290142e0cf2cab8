"""Speaker-count constraints (exact number, or bounds), validated once for every interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CLI_NAMES", "PYTHON_NAMES", "SpeakerCount", "SpeakerCountError", "count_from_text", "speaker_count_errors"]

PYTHON_NAMES = ("num_speakers", "min_speakers", "max_speakers")
"""How the Python API, the configs and the WebSocket ``start`` message name the three fields; the CLI
(``--num-speakers``) and the job API (``numSpeakers``) pass their own names, so messages name what the
caller typed."""
CLI_NAMES = ("--num-speakers", "--min-speakers", "--max-speakers")


class SpeakerCountError(ValueError):
    """Invalid speaker-count constraints; ``errors`` lists every ``(field name, message)``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(message for _, message in errors))
        self.errors = errors


def count_from_text(text: str) -> int | str:
    """A command-line value as an ``int`` when it is one, else the text itself, so that
    :func:`speaker_count_errors` reports it in the same words as any other bad count."""
    try:
        return int(text)
    except ValueError:
        return text


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def speaker_count_errors(
    num: Any, low: Any, high: Any, names: tuple[str, str, str] = PYTHON_NAMES
) -> list[tuple[str, str]]:
    """Everything wrong with a ``(num, min, max)`` triple, as ``(field name, message)`` pairs.

    Parameters
    ----------
    num, low, high
        The exact count and the bounds as the caller gave them (``None``: not set); anything else
        than ``None`` or an integer >= 1 is reported, booleans included.
    names
        The caller's names of the three fields, used in the messages.

    Returns
    -------
    list
        Empty when valid.

    Examples
    --------
    >>> speaker_count_errors(2, None, 3, ("numSpeakers", "minSpeakers", "maxSpeakers"))
    [('numSpeakers', 'numSpeakers cannot be combined with minSpeakers or maxSpeakers')]
    """
    num_name, min_name, max_name = names
    errors = [(name, f"{name} must be a whole number of speakers >= 1, got {value!r}")
              for name, value in zip(names, (num, low, high)) if value is not None and not _is_count(value)]
    if num is not None and (low is not None or high is not None):
        errors.append((num_name, f"{num_name} cannot be combined with {min_name} or {max_name}"))
    if _is_count(low) and _is_count(high) and low > high:
        errors.append((min_name, f"{min_name} ({low}) must not be greater than {max_name} ({high})"))
    return errors


@dataclass(frozen=True)
class SpeakerCount:
    """How many speakers to find: exactly ``num``, or between ``min`` and ``max`` (each optional).

    Parameters
    ----------
    num
        Exact number of speakers, >= 1; excludes ``min`` and ``max``.
    min, max
        Bounds on the estimated number, >= 1, ``min <= max``.

    Raises
    ------
    SpeakerCountError
        (a ``ValueError``) naming every problem.

    Examples
    --------
    >>> SpeakerCount(max=4).cap
    4
    >>> try:
    ...     SpeakerCount.parse(0, None, None, ("--num-speakers", "--min-speakers", "--max-speakers"))
    ... except ValueError as exc:
    ...     print(exc)
    --num-speakers must be a whole number of speakers >= 1, got 0
    """

    num: int | None = None
    min: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        errors = speaker_count_errors(self.num, self.min, self.max)
        if errors:
            raise SpeakerCountError(errors)

    @classmethod
    def parse(cls, num: Any, low: Any, high: Any, names: tuple[str, str, str] = PYTHON_NAMES) -> SpeakerCount:
        """Validate values from an interface (CLI, request body) with that interface's field names."""
        errors = speaker_count_errors(num, low, high, names)
        if errors:
            raise SpeakerCountError(errors)
        return cls(num, low, high)

    @property
    def cap(self) -> int | None:
        """The most speakers allowed (``num`` or ``max``), ``None`` for no limit."""
        return self.num if self.num is not None else self.max

    @property
    def floor(self) -> int:
        """The fewest speakers allowed (``num`` or ``min``, else 1)."""
        return self.num if self.num is not None else (self.min if self.min is not None else 1)
