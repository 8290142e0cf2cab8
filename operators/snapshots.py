"""``SnapshotEmitter``: the full result after each closed utterance, speakers numbered by first appearance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from .clustering import SpeakerTurns
from .messages import Snapshot, SpeakerTurn

__all__ = ["SnapshotEmitter", "SnapshotEmitterConfig", "SnapshotEmitterState"]


@dataclass(frozen=True)
class SnapshotEmitterState:
    frozen_order: tuple[int, ...] = ()  # internal speaker ids in order of first appearance in frozen turns
    frozen_seen: int = 0  # frozen turns already scanned


@dataclass(frozen=True)
class SnapshotEmitterConfig:
    """Turn the clusterer's view into :class:`Snapshot` messages (one per closed utterance, one final)."""

    input_types: ClassVar[tuple[type, ...]] = (SpeakerTurns,)
    output_types: ClassVar[tuple[type, ...]] = (Snapshot,)

    def build(self, state: SnapshotEmitterState | None, resources: Any = None) -> SnapshotEmitter:
        return SnapshotEmitter(state or SnapshotEmitterState())


class SnapshotEmitter:
    """Numbers speakers by first appearance; scans frozen turns once (O(new turns) per snapshot)."""

    def __init__(self, state: SnapshotEmitterState) -> None:
        self._order: dict[int, int] = {speaker: i for i, speaker in enumerate(state.frozen_order)}
        self._seen = state.frozen_seen

    @staticmethod
    def _extend(order: dict[int, int], turns: Sequence[SpeakerTurn]) -> None:
        for turn in turns:
            if turn.speaker not in order:
                order[turn.speaker] = len(order)

    def on_item(self, item: SpeakerTurns) -> Sequence[Snapshot]:
        if item.frozen_count < self._seen:  # a re-labelled history (offline refinement): start over
            self._order, self._seen = {}, 0
        self._extend(self._order, item.frozen[self._seen: item.frozen_count])
        self._seen = item.frozen_count
        numbers = dict(self._order)
        self._extend(numbers, item.live)
        return [Snapshot(item.frozen, item.frozen_count, item.live, numbers, item.utterances, item.end_sample,
                         item.final, item.warnings, item.frame_confidence, item.centroids)]

    def on_watermark(self, sample: int) -> Sequence[Snapshot]:
        return []

    def on_eof(self) -> Sequence[Snapshot]:
        return []

    def checkpoint(self) -> SnapshotEmitterState:
        return SnapshotEmitterState(tuple(sorted(self._order, key=self._order.__getitem__)), self._seen)
