"""Reading a child process's stdout line by line as it writes, under a deadline and a size cap,
while draining its stderr (a child blocked on a full stderr pipe would never finish its stdout).

Plain ``selectors`` and ``os.read`` on the two pipes: no threads, so a Celery prefork worker
(or a threads-pool one) can use it as is.
"""

from __future__ import annotations

import os
import selectors
import time

_READ_SIZE = 1 << 16
_STDERR_TAIL = 2000


class LineReader:
    """Lines of one pipe, read as they arrive; the tail of the other pipe is kept."""

    def __init__(self, stdout_fd: int, stderr_fd: int, *, limit: int) -> None:
        self._selector = selectors.DefaultSelector()
        self._selector.register(stdout_fd, selectors.EVENT_READ, "out")
        self._selector.register(stderr_fd, selectors.EVENT_READ, "err")
        self._buffer = bytearray()
        self._stderr = bytearray()
        self._limit = limit
        self._read = 0
        self._out_open = True

    def next_line(self, deadline: float) -> bytes | None:
        """The next complete line (without its newline); None at the end of the output.

        Raises TimeoutError past ``deadline`` (``time.monotonic()``) and OverflowError once
        more than ``limit`` bytes have come."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                return line
            if not self._out_open:
                # An unterminated last line is what a killed child was writing: not a line.
                self._buffer.clear()
                return None
            self._fill(deadline)

    def stderr_tail(self) -> bytes:
        return bytes(self._stderr[-_STDERR_TAIL:])

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        for key, _ in self._selector.select(timeout=remaining):
            data = os.read(key.fd, _READ_SIZE)
            if not data:
                self._selector.unregister(key.fd)
                if key.data == "out":
                    self._out_open = False
            elif key.data == "out":
                self._read += len(data)
                if self._read > self._limit:
                    raise OverflowError
                self._buffer += data
            else:
                self._stderr = (self._stderr + data)[-_STDERR_TAIL:]
