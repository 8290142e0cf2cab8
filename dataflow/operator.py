"""The operator protocol: a frozen config builds a runtime object with explicit, checkpointable state."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, Protocol, Sequence, TypeVar, runtime_checkable

__all__ = ["Operator", "OperatorConfig", "StateT"]

StateT = TypeVar("StateT")
StateT_co = TypeVar("StateT_co", covariant=True)


@runtime_checkable
class Operator(Protocol[StateT_co]):
    """A stateful step of a graph.

    Every call returns the messages it produces, in time order. Operators never read the wall clock
    and never ask in which mode (offline, streaming) they run.
    """

    def on_item(self, item: Any) -> Sequence[Any]:
        """Consume one message; must not mutate it."""
        ...

    def on_watermark(self, sample: int) -> Sequence[Any]:
        """No message with time before ``sample`` will arrive any more; watermarks never go back."""
        ...

    def on_eof(self) -> Sequence[Any]:
        """End of input, called exactly once; flush everything still pending."""
        ...

    def checkpoint(self) -> StateT_co:
        """The operator's state as plain arrays and scalars; building from it resumes exactly here."""
        ...


class OperatorConfig(Protocol, Generic[StateT]):
    """A frozen, validated description of an operator (``__post_init__`` raises ``ValueError``).

    ``input_types`` are the message classes the operator accepts; ``output_types`` those it may emit.
    ``build(state, resources)`` creates the runtime: from scratch when ``state`` is ``None``, else
    resumed from a checkpoint (fresh start and resume are one path). ``resources`` are shared,
    read-only objects such as loaded models.
    """

    input_types: ClassVar[tuple[type, ...]]
    output_types: ClassVar[tuple[type, ...]]

    def build(self, state: StateT | None, resources: Any) -> Operator[StateT]: ...
