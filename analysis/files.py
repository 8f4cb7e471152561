"""Reading outside files safely: only regular files, never blocking, never more than a limit."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["read_regular"]


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes, else OSError/ValueError.

    ``stat`` first, so a FIFO, device or directory is refused before it is opened; then opened
    non-blocking and checked again on the descriptor (it may have been swapped meanwhile), and
    read at most ``limit + 1`` bytes, so a file that grows cannot exhaust memory either.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError("not a regular file")
    if st.st_size > limit:
        raise ValueError(f"{st.st_size} bytes is over the limit of {limit}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ValueError(f"over the limit of {limit} bytes")
    return b"".join(chunks)
