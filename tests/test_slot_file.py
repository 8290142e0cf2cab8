"""The two-slot file behind live checkpoints: a save cut short anywhere leaves the previous version."""

from __future__ import annotations

from pathlib import Path

import pytest

from diarflow.slot_file import SlotFile


def test_newest_version_wins_and_a_reopened_file_continues_it(tmp_path: Path) -> None:
    slots = SlotFile(tmp_path / "s")
    for i in range(5):
        slots.write(b"v%d" % i * 1000)
    reopened = SlotFile(tmp_path / "s")
    assert reopened.read() == b"v4" * 1000
    reopened.write(b"v5")  # overwrites the older slot, not the one it just read
    assert SlotFile(tmp_path / "s").read() == b"v5"
    size = (tmp_path / "s").stat().st_size
    reopened.write(b"x" * 200_000)  # larger than a slot: the file is replaced, with room to grow
    assert SlotFile(tmp_path / "s").read() == b"x" * 200_000 and (tmp_path / "s").stat().st_size > size


@pytest.mark.parametrize("cut", ["torn body", "torn header", "file cut short"])
def test_a_torn_write_falls_back_to_the_previous_version(tmp_path: Path, cut: str) -> None:
    path = tmp_path / "s"
    slots = SlotFile(path)
    slots.write(b"old" * 100)
    slots.write(b"new" * 100)  # slot 1: after the prefix (16 bytes), slot 0's header (20) and its capacity
    raw = bytearray(path.read_bytes())
    start = len(raw) - 300 - 20
    if cut == "torn body":
        raw[-10:] = b"old" * 3 + b"o"  # half the new body, half stale bytes: the CRC does not match
    elif cut == "torn header":
        raw[start: start + 8] = b"\xff" * 8  # a generation without its length and CRC
    else:
        raw = raw[:-50]
    path.write_bytes(bytes(raw))
    assert SlotFile(path).read() == b"old" * 100


def test_not_a_slot_file_or_nothing_complete_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"\x80\x05 a pickle from an older version")
    with pytest.raises(ValueError, match="not a slot file"):
        SlotFile(path).read()
    slots = SlotFile(path)
    slots.write(b"only")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="no complete version"):
        SlotFile(path).read()
    with pytest.raises(FileNotFoundError):
        SlotFile(tmp_path / "missing").read()
