"""``SnapshotEmitter``: the full result after each closed utterance, speakers numbered by first appearance.

Besides numbering, it states what a client may rely on: the settled horizon (non-decreasing; in the final
snapshot everything is settled, up to the end of the last utterance) and how much already-reported speech
changed speaker since the last snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from .clustering import SpeakerTurns
from .messages import Snapshot, SpeakerTurn

__all__ = ["SnapshotEmitter", "SnapshotEmitterConfig", "SnapshotEmitterState", "relabelled_samples"]


@dataclass(frozen=True)
class SnapshotEmitterState:
    frozen_order: tuple[int, ...] = ()  # internal speaker ids in order of first appearance in frozen turns
    frozen_seen: int = 0  # frozen turns already scanned
    # live turns of the last snapshot as (start_sample, end_sample, public speaker) rows, (n, 3)
    reported: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    settled_until_sample: int = 0
    pinned: tuple[SpeakerTurn, ...] = ()  # settle_samples only: turns settled by this emitter, in time order


@dataclass(frozen=True)
class SnapshotEmitterConfig:
    """Turn the clusterer's view into :class:`Snapshot` messages (one per closed utterance, one final).

    Parameters
    ----------
    settle_samples
        ``None`` (default): the settled horizon is the clusterer's frozen one (speech leaving its rolling
        buffer). Otherwise settle the *output* this far behind the end of the latest utterance: at the
        last silence before ``end - settle_samples``, turns are pinned as last reported and later
        relabelling by the clusterer no longer reaches them (labels trade a little hindsight for
        stability). Must be below the clusterer's ``retention_samples``.
    """

    settle_samples: int | None = None

    input_types: ClassVar[tuple[type, ...]] = (SpeakerTurns,)
    output_types: ClassVar[tuple[type, ...]] = (Snapshot,)

    def __post_init__(self) -> None:
        if self.settle_samples is not None and (isinstance(self.settle_samples, bool)
                                                or not isinstance(self.settle_samples, int) or self.settle_samples < 0):
            raise ValueError(f"settle_samples must be None or an integer >= 0, got {self.settle_samples!r}")

    def build(self, state: SnapshotEmitterState | None, resources: Any = None) -> SnapshotEmitter:
        return SnapshotEmitter(self, state or SnapshotEmitterState())


def _union_samples(starts: np.ndarray, ends: np.ndarray) -> int:
    """Length of the union of half-open spans ``[starts[i], ends[i])``."""
    total, reach = 0, None
    for a, b in sorted(zip(starts.tolist(), ends.tolist())):
        if b <= a:
            continue
        if reach is None or a >= reach:
            total += b - a
            reach = b
        elif b > reach:
            total += b - reach
            reach = b
    return total


def relabelled_samples(previous: np.ndarray, current: np.ndarray) -> int:
    """Samples of ``previous`` turns now covered by ``current`` turns of another speaker only.

    Parameters
    ----------
    previous, current
        int ``(n, 3)`` / ``(m, 3)`` rows ``(start_sample, end_sample, speaker)``.

    Examples
    --------
    >>> import numpy as np
    >>> relabelled_samples(np.array([[0, 100, 0]]), np.array([[0, 40, 0], [40, 100, 1]]))
    60
    """
    changed = 0
    for a, b, speaker in previous.tolist():
        overlap = current[(current[:, 0] < b) & (current[:, 1] > a)]
        if not len(overlap):
            continue
        starts, ends = np.maximum(overlap[:, 0], a), np.minimum(overlap[:, 1], b)
        same = overlap[:, 2] == speaker
        changed += _union_samples(starts, ends) - _union_samples(starts[same], ends[same])
    return changed


def free_point(turns: Sequence[SpeakerTurn], floor: int, limit: int) -> int:
    """The latest sample in ``[floor, limit]`` that lies strictly inside no turn (``floor`` if none).

    Examples
    --------
    >>> free_point([SpeakerTurn(0, 10, 0), SpeakerTurn(12, 30, 1)], 0, 20)
    12
    """
    best, reach = floor, floor
    for turn in sorted(turns, key=lambda t: t.start_sample):
        if turn.start_sample > limit:
            break
        if turn.start_sample >= reach:
            best = max(best, min(turn.start_sample, limit))
        reach = max(reach, turn.end_sample)
    return max(best, limit) if reach <= limit else best


def _rows(turns: Sequence[SpeakerTurn], numbers: Mapping[int, int]) -> np.ndarray:
    return np.array([(t.start_sample, t.end_sample, numbers[t.speaker]) for t in turns], np.int64).reshape(-1, 3)


class SnapshotEmitter:
    """Numbers speakers by first appearance; scans frozen turns once (O(new turns) per snapshot)."""

    def __init__(self, config: SnapshotEmitterConfig, state: SnapshotEmitterState) -> None:
        self.config = config
        self._pinned: list[SpeakerTurn] = list(state.pinned)
        self._order: dict[int, int] = {speaker: i for i, speaker in enumerate(state.frozen_order)}
        self._seen = state.frozen_seen
        self._reported = state.reported
        self._settled = state.settled_until_sample

    @staticmethod
    def _extend(order: dict[int, int], turns: Sequence[SpeakerTurn]) -> None:
        for turn in turns:
            if turn.speaker not in order:
                order[turn.speaker] = len(order)

    def on_item(self, item: SpeakerTurns) -> Sequence[Snapshot]:
        if self.config.settle_samples is not None and not (item.final and item.frozen_count < self._seen):
            return [self._settled_view(item, self.config.settle_samples)]
        if item.frozen_count < self._seen:  # a re-labelled history (offline refinement): start over
            self._order, self._seen, self._reported = {}, 0, np.zeros((0, 3), np.int64)
        newly_frozen = item.frozen[self._seen: item.frozen_count]
        self._extend(self._order, newly_frozen)
        self._seen = item.frozen_count
        numbers = dict(self._order)
        self._extend(numbers, item.live)
        current = _rows([*newly_frozen, *item.live], numbers)
        relabelled = relabelled_samples(self._reported, current)
        self._reported = _rows(item.live, numbers)
        if item.final:  # the end of the last utterance: the caller knows where the audio itself ends
            settled = item.end_sample
        else:  # turns added after the clusterer (e.g. overlapped speech) may start before its horizon
            settled = min([item.settled_until_sample, *(t.start_sample for t in item.live)])
        self._settled = max(self._settled, settled)
        return [Snapshot(item.frozen, item.frozen_count, item.live, numbers, item.utterances, item.end_sample,
                         item.final, item.warnings, item.frame_confidence, item.centroids,
                         settled_until_sample=self._settled, relabelled_samples=relabelled)]

    def _settled_view(self, item: SpeakerTurns, settle_samples: int) -> Snapshot:
        """The snapshot with the output settled ``settle_samples`` behind the edge (see the config)."""
        settled = self._settled
        while self._seen < item.frozen_count and item.frozen[self._seen].end_sample <= settled:
            self._seen += 1  # frozen turns behind the horizon were pinned while they were live
        candidates = [t if t.start_sample >= settled else replace(t, start_sample=settled)
                      for t in (*item.frozen[self._seen: item.frozen_count], *item.live) if t.end_sample > settled]
        candidates.sort(key=lambda t: (t.start_sample, t.end_sample))
        if item.final:
            settled = max(settled, item.end_sample)
        else:
            settled = free_point(candidates, settled, item.end_sample - settle_samples)
        newly_pinned = [t for t in candidates if t.end_sample <= settled]
        live = tuple(t for t in candidates if t.end_sample > settled)
        self._extend(self._order, newly_pinned)
        numbers = dict(self._order)
        self._extend(numbers, live)
        relabelled = relabelled_samples(self._reported, _rows([*newly_pinned, *live], numbers))
        self._pinned.extend(newly_pinned)
        self._reported = _rows(live, numbers)
        self._settled = settled
        return Snapshot(self._pinned, len(self._pinned), live, numbers, item.utterances, item.end_sample, item.final,
                        item.warnings, item.frame_confidence, item.centroids, settled_until_sample=settled,
                        relabelled_samples=relabelled)

    def on_watermark(self, sample: int) -> Sequence[Snapshot]:
        return []

    def on_eof(self) -> Sequence[Snapshot]:
        return []

    def checkpoint(self) -> SnapshotEmitterState:
        return SnapshotEmitterState(tuple(sorted(self._order, key=self._order.__getitem__)), self._seen,
                                    self._reported.copy(), self._settled, tuple(self._pinned))
