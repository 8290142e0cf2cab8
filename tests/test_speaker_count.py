"""Speaker counts are validated once: every interface reports the same words, in its own field names."""

from __future__ import annotations

import pytest

from diarflow.batch import BatchOptions
from diarflow.cli import main
from diarflow.operators.clustering import OnlineClustererConfig
from diarflow.operators.speaker_count import (
    CLI_NAMES,
    PYTHON_NAMES,
    SpeakerCount,
    SpeakerCountError,
    speaker_count_errors,
)
from diarflow.servers.jobs.validation import ValidationFailed, parse_diarize

JOB_NAMES = ("numSpeakers", "minSpeakers", "maxSpeakers")
BAD = [(0, None, None), (True, None, None), (None, "2", None), (2, None, 3), (None, 4, 3)]


def _rename(message: str, names: tuple[str, str, str]) -> str:
    for mine, python in zip(names, PYTHON_NAMES):
        message = message.replace(mine, python)
    return message


@pytest.mark.parametrize("num, low, high", BAD)
def test_every_interface_reports_the_same_message(num: object, low: object, high: object,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (expected,) = [message for _, message in speaker_count_errors(num, low, high)]
    with pytest.raises(SpeakerCountError) as config_error:
        OnlineClustererConfig(num_speakers=num, min_speakers=low, max_speakers=high)  # type: ignore[arg-type]
    with pytest.raises(SpeakerCountError) as batch_error:
        BatchOptions(num_speakers=num, min_speakers=low, max_speakers=high)  # type: ignore[arg-type]
    assert str(config_error.value) == str(batch_error.value) == expected
    body = {"url": "https://example.com/a.wav", **dict(zip(JOB_NAMES, (num, low, high)))}
    with pytest.raises(ValidationFailed) as job_error:
        parse_diarize(body)
    assert [_rename(e["message"], JOB_NAMES) for e in job_error.value.errors] == [expected]
    if all(type(v) in (int, type(None)) for v in (num, low, high)):  # the command line reads integers
        argv = ["diarize", "x.wav"] + [arg for flag, value in zip(CLI_NAMES, (num, low, high)) if value is not None
                                       for arg in (flag, str(value))]
        with pytest.raises(SystemExit):
            main(argv)
        assert expected in _rename(capsys.readouterr().err.strip().splitlines()[-1], CLI_NAMES)


def test_all_problems_are_listed_with_their_fields() -> None:
    errors = speaker_count_errors(0, 5, 4, JOB_NAMES)
    assert [field for field, _ in errors] == ["numSpeakers", "numSpeakers", "minSpeakers"]
    assert speaker_count_errors(None, 2, 2) == [] and speaker_count_errors(3, None, None) == []


def test_valid_counts_and_their_cap() -> None:
    assert SpeakerCount().cap is None and SpeakerCount(num=2).cap == 2 and SpeakerCount(min=1, max=4).cap == 4
    assert SpeakerCount.parse(None, 2, 3) == SpeakerCount(min=2, max=3)
    assert OnlineClustererConfig(min_speakers=2, max_speakers=3).speakers == SpeakerCount(min=2, max=3)
