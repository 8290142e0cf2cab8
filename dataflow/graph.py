"""Graphs: named operator configs wired explicitly, validated and frozen, with a content digest."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .operator import OperatorConfig

__all__ = ["Graph", "GraphBuilder", "GraphError"]


class GraphError(ValueError):
    """The wiring is invalid: unknown node, cycle, or message types that do not fit."""


def _config_fingerprint(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {
            "type": f"{type(config).__module__}.{type(config).__qualname__}",
            "fields": {f.name: _config_fingerprint(getattr(config, f.name)) for f in dataclasses.fields(config)},
        }
    if isinstance(config, (list, tuple)):
        return [_config_fingerprint(v) for v in config]
    if isinstance(config, dict):
        return {str(k): _config_fingerprint(v) for k, v in sorted(config.items())}
    if config is None or isinstance(config, (bool, int, float, str)):
        return config
    return repr(config)


@dataclass(frozen=True)
class Graph:
    """A validated, immutable DAG of operator configs. Build it with :class:`GraphBuilder`.

    Attributes
    ----------
    nodes
        Node name -> config, in topological order (sources first).
    edges
        Node name -> names of its downstream nodes. An edge carries the messages of the types its
        downstream node accepts (its ``input_types``); a node may emit types for several consumers.
    source
        The node that receives the driver's input messages.
    sinks
        Nodes whose outputs are the graph's results.
    digest
        sha256 over configs and wiring; checkpoints carry it so that a checkpoint is never
        restored into a different graph.
    """

    nodes: Mapping[str, OperatorConfig[Any]]
    edges: Mapping[str, tuple[str, ...]]
    source: str
    sinks: tuple[str, ...]
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        blob = json.dumps(
            {"nodes": {n: _config_fingerprint(c) for n, c in self.nodes.items()},
             "edges": {n: list(d) for n, d in self.edges.items()}, "source": self.source},
            sort_keys=True,
        )
        object.__setattr__(self, "digest", hashlib.sha256(blob.encode()).hexdigest())

    def accepts(self, node: str, message: Any) -> bool:
        """Whether an edge into ``node`` delivers ``message`` (an instance of one of its input types)."""
        return isinstance(message, self.nodes[node].input_types)

    def replace(self, name: str, config: OperatorConfig[Any]) -> Graph:
        """A new graph with node ``name``'s config swapped (wiring kept, types re-validated)."""
        builder = GraphBuilder()
        for node, old in self.nodes.items():
            builder.add(node, config if node == name else old)
        if name not in self.nodes:
            raise GraphError(f"no node named {name!r}; nodes are {list(self.nodes)}")
        for upstream, downstream in self.edges.items():
            for d in downstream:
                builder.connect(upstream, d)
        return builder.freeze()


class GraphBuilder:
    """Collects nodes and edges; :meth:`freeze` validates and returns a :class:`Graph`.

    Examples
    --------
    >>> g = GraphBuilder().chain(("framer", framer_cfg), ("vad", vad_cfg)).freeze()  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._nodes: dict[str, OperatorConfig[Any]] = {}
        self._edges: dict[str, list[str]] = {}

    def add(self, name: str, config: OperatorConfig[Any]) -> GraphBuilder:
        if name in self._nodes:
            raise GraphError(f"node {name!r} is defined twice")
        for attr in ("input_types", "output_types", "build"):
            if not hasattr(config, attr):
                raise GraphError(f"node {name!r}: {type(config).__name__} is not an operator config (no {attr})")
        self._nodes[name] = config
        self._edges[name] = []
        return self

    def connect(self, upstream: str, downstream: str) -> GraphBuilder:
        for n in (upstream, downstream):
            if n not in self._nodes:
                raise GraphError(f"cannot connect unknown node {n!r}; known: {list(self._nodes)}")
        self._edges[upstream].append(downstream)
        return self

    def chain(self, *named: tuple[str, OperatorConfig[Any]]) -> GraphBuilder:
        """Add nodes and connect each to the next."""
        previous = None
        for name, config in named:
            self.add(name, config)
            if previous is not None:
                self.connect(previous, name)
            previous = name
        return self

    def freeze(self) -> Graph:
        if not self._nodes:
            raise GraphError("a graph needs at least one node")
        indegree = {n: 0 for n in self._nodes}
        for downstream in self._edges.values():
            for d in downstream:
                indegree[d] += 1
        sources = [n for n, k in indegree.items() if k == 0]
        if len(sources) != 1:
            raise GraphError(f"expected exactly one source node, found {sources}")
        order: list[str] = []
        ready = list(sources)
        while ready:
            node = ready.pop(0)
            order.append(node)
            for d in self._edges[node]:
                indegree[d] -= 1
                if indegree[d] == 0:
                    ready.append(d)
        if len(order) != len(self._nodes):
            raise GraphError(f"the graph has a cycle through {sorted(set(self._nodes) - set(order))}")
        for upstream, downstream in self._edges.items():
            produced = self._nodes[upstream].output_types
            for d in downstream:
                accepted = self._nodes[d].input_types
                if not any(issubclass(t, accepted) for t in produced):
                    raise GraphError(
                        f"{upstream!r} -> {d!r}: {d!r} accepts {[t.__name__ for t in accepted]}, "
                        f"but {upstream!r} emits none of them ({[t.__name__ for t in produced]})"
                    )
        sinks = tuple(n for n in order if not self._edges[n])
        return Graph(
            nodes={n: self._nodes[n] for n in order},
            edges={n: tuple(self._edges[n]) for n in order},
            source=sources[0],
            sinks=sinks,
        )
