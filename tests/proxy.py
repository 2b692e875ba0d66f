"""A TCP proxy the test controls: pass bytes, black-hole them, or cut every connection.

Black-holed is what a partition looks like to a process: its connections stay open (nothing
resets them, the kernel acknowledges every segment it sends), and no byte ever comes back.
The proxy runs on the test's own event loop; processes under test connect through it.
"""

from __future__ import annotations

import asyncio
import contextlib

from longline._embedded import free_port


class Proxy:
    """Listens on 127.0.0.1:port and forwards to target_port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.blackholed = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._resume = asyncio.Event()
        self._resume.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    def blackhole(self) -> None:
        """Stop moving bytes, both ways, on every connection, old and new; keep them open."""
        self.blackholed = True
        self._resume.clear()

    def heal(self) -> None:
        """Move bytes again (what was held back is delivered)."""
        self.blackholed = False
        self._resume.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers |= {writer, upstream_writer}
        await asyncio.gather(
            self._pipe(reader, upstream_writer),
            self._pipe(upstream_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._resume.wait()  # black-holed: held here, the socket stays open
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._resume.set()
