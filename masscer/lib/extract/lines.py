"""Reading child processes' stdout line by line as they write, under a deadline and one size cap
over all of them, while draining their stderr (a child blocked on a full stderr pipe would
never finish its stdout).

Plain ``selectors`` and ``os.read`` on the pipes: no threads, so a Celery prefork worker (or a
threads-pool one) can use it as is. Several children are read at once, whichever writes, so
none of them waits on a full pipe while the parent waits on another.
"""

from __future__ import annotations

import os
import selectors
import time
from collections import deque

_READ_SIZE = 1 << 16
_STDERR_TAIL = 2000


class _Child:
    """What one child wrote so far: its unfinished stdout line and the tail of its stderr."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.stderr = bytearray()


class LineReader:
    """Lines of several children's stdout, read as they arrive; the tail of each stderr kept.

    Each child is known by the key it was added with."""

    def __init__(self, *, limit: int) -> None:
        self._selector = selectors.DefaultSelector()
        self._children: dict[int, _Child] = {}
        self._lines: deque[tuple[int, bytes | None]] = deque()
        self._limit = limit
        self._read = 0

    def add(self, key: int, stdout_fd: int, stderr_fd: int) -> None:
        self._children[key] = _Child()
        self._selector.register(stdout_fd, selectors.EVENT_READ, (key, "out"))
        self._selector.register(stderr_fd, selectors.EVENT_READ, (key, "err"))

    def next_line(self, deadline: float) -> tuple[int, bytes | None]:
        """(key, the next complete line of that child without its newline); the line is None
        at the end of that child's output.

        Raises TimeoutError past ``deadline`` (``time.monotonic()``) and OverflowError once
        the children together have written more than ``limit`` bytes."""
        while not self._lines:
            self._fill(deadline)
        return self._lines.popleft()

    def stderr_tail(self, key: int) -> bytes:
        return bytes(self._children[key].stderr)

    def drain_stderr(self, key: int) -> None:
        """Read what is left in a finished child's stderr (it wrote it before it exited)."""
        fds = [k.fd for k in self._selector.get_map().values() if k.data == (key, "err")]
        for fd in fds:
            os.set_blocking(fd, False)
            try:
                while data := os.read(fd, _READ_SIZE):
                    self._keep_stderr(key, data)
            except BlockingIOError:
                pass  # nothing more now (something else may still hold the pipe open)

    def close(self) -> None:
        self._selector.close()

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        for selected, _ in self._selector.select(timeout=remaining):
            key, stream = selected.data
            data = os.read(selected.fd, _READ_SIZE)
            if not data:
                self._selector.unregister(selected.fd)
                if stream == "out":
                    # An unterminated last line is what a killed child was writing: not a line.
                    self._children[key].buffer.clear()
                    self._lines.append((key, None))
            elif stream == "out":
                self._read += len(data)
                if self._read > self._limit:
                    raise OverflowError
                self._take_lines(key, data)
            else:
                self._keep_stderr(key, data)

    def _take_lines(self, key: int, data: bytes) -> None:
        buffer = self._children[key].buffer
        buffer += data
        newline = buffer.rfind(b"\n")
        if newline < 0:
            return
        complete = bytes(buffer[:newline])
        del buffer[: newline + 1]
        self._lines.extend((key, line) for line in complete.split(b"\n"))

    def _keep_stderr(self, key: int, data: bytes) -> None:
        child = self._children[key]
        child.stderr = (child.stderr + data)[-_STDERR_TAIL:]
