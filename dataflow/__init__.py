"""diarflow's dataflow engine: operators, graphs, an executor and two drivers; no audio models, no HTTP."""

from .executor import (
    Checkpoint,
    CheckpointMismatch,
    Executor,
    StreamingSession,
    Timed,
    iter_offline,
    run_offline,
)
from .graph import Graph, GraphBuilder, GraphError
from .operator import Operator, OperatorConfig

__all__ = [
    "Checkpoint",
    "CheckpointMismatch",
    "Executor",
    "Graph",
    "GraphBuilder",
    "GraphError",
    "Operator",
    "OperatorConfig",
    "StreamingSession",
    "Timed",
    "iter_offline",
    "run_offline",
]
