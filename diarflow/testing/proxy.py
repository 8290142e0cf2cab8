"""A TCP proxy on 127.0.0.1 whose connections a test can cut without a close frame (a network drop), and
that can refuse new ones for a while (a network that stays down)."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["DroppingProxy"]


class DroppingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<target_port>``; :meth:`cut` aborts every open
    connection (both sides see a reset, as when a network goes away); while :attr:`refusing` is true, new
    connections are reset at once (the network is still down). Runs on the caller's event loop.

    Examples
    --------
    >>> async with DroppingProxy(8000) as proxy:  # doctest: +SKIP
    ...     url = f"ws://127.0.0.1:{proxy.port}/diarize/stream"
    ...     proxy.cut()
    ...     proxy.refusing = True  # the network stays down: reconnections fail
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.connections = 0  # connections forwarded (or tried) to the target; refused ones are not counted
        self.refused = 0
        self.refusing = False
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> DroppingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Drop every open connection now (no WebSocket close frame, no FIN: a reset)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            self.refused += 1
            client_writer.transport.abort()
            return
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the server is down: the client sees its connection fail
            client_writer.transport.abort()
            return
        pair = {client_writer, upstream_writer}
        self._writers |= pair

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pump(client_reader, upstream_writer), pump(upstream_reader, client_writer),
                             return_exceptions=True)
        self._writers -= pair
