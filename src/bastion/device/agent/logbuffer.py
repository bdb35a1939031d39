"""The agent's offline log buffer: segment files on the data volume, bounded, crash-safe.

Lines wait here until the server took them. The folder holds ``seg-<n>.jsonl`` files,
one JSON string per line; the highest-numbered one is open for appending, the others are
sealed. :meth:`LogBuffer.append` writes and fsyncs before it returns, so a line that was
queued survives a crash or a restart. :meth:`peek` returns the oldest sealed segment
(sealing the open one if it is the only one) and :meth:`commit` deletes it once the
server answered 200: delivery is at least once (a crash between the two re-sends one
segment).

Bounds: a segment holds at most ``AGENT_LOG_SEGMENT_MAX_BYTES`` and
``HTTP_MAX_LOG_LINES`` lines (one upload); the folder at most
``AGENT_LOG_BUFFER_MAX_BYTES``: beyond that the *oldest* segments are dropped and
the next upload starts with a line saying how many were lost. A full disk never loses
what was already queued: a failed write is cut back (``ftruncate``) to the last whole
line, and the new lines wait in memory (at most ``AGENT_LOG_MEMORY_MAX``, oldest
dropped and counted) until a later append or flush finds space.
"""

from __future__ import annotations

import collections
import json
import os
import re
from pathlib import Path

from bastion import limits
from bastion.io.files import atomic_write, fsync_dir

_SEGMENT = re.compile(r"^seg-(\d{12})\.jsonl$")
DROPPED_FILE = "dropped"


class LogBuffer:
    """Bounded, durable FIFO of log lines in ``folder``."""

    def __init__(
        self,
        folder: Path,
        *,
        max_bytes: int = limits.AGENT_LOG_BUFFER_MAX_BYTES,
        segment_bytes: int = limits.AGENT_LOG_SEGMENT_MAX_BYTES,
        segment_lines: int = limits.HTTP_MAX_LOG_LINES - 1,  # + the dropped marker
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.segment_lines = segment_lines
        self.memory: collections.deque[str] = collections.deque()
        self.memory_dropped = 0
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    # --- state on disk ---------------------------------------------------------------

    def segments(self) -> list[Path]:
        """Segment files, oldest first."""
        found = [p for p in self.folder.iterdir() if _SEGMENT.match(p.name)]
        return sorted(found, key=lambda p: p.name)

    def size(self) -> int:
        """Bytes queued on disk."""
        return sum(p.stat().st_size for p in self.segments())

    def _disk_dropped(self) -> int:
        try:
            return int((self.folder / DROPPED_FILE).read_text().strip() or "0")
        except (FileNotFoundError, ValueError):
            return 0

    def dropped(self) -> int:
        """Lines dropped so far and not yet reported."""
        return self._disk_dropped() + self.memory_dropped

    def _note_dropped(self, count: int) -> None:
        if count:
            atomic_write(self.folder / DROPPED_FILE, str(self._disk_dropped() + count).encode())

    @staticmethod
    def _number(path: Path) -> int:
        m = _SEGMENT.match(path.name)
        assert m is not None
        return int(m.group(1))

    def _new_segment(self, after: list[Path]) -> Path:
        n = self._number(after[-1]) + 1 if after else 1
        return self.folder / f"seg-{n:012d}.jsonl"

    @staticmethod
    def _lines_in(path: Path) -> int:
        with path.open("rb") as f:
            return sum(1 for _ in f)

    # --- writing -------------------------------------------------------------------------

    def append(self, lines: list[str]) -> int:
        """Queue ``lines`` durably (each cut to ``AGENT_LOG_LINE_MAX`` bytes); how many
        reached the disk (the rest wait in memory: the disk refused them)."""
        pending = [*self.memory, *(_cut(line) for line in lines)]
        self.memory.clear()
        written = 0
        for index, line in enumerate(pending):
            try:
                self._write_line(line)
            except OSError:
                self._keep_in_memory(pending[index:])
                return written
            written += 1
        self._enforce_bound()
        return written

    def _keep_in_memory(self, lines: list[str]) -> None:
        for line in lines:
            if len(self.memory) >= limits.AGENT_LOG_MEMORY_MAX:
                self.memory.popleft()
                self.memory_dropped += 1
            self.memory.append(line)

    def _write_line(self, line: str) -> None:
        record = (json.dumps(line) + "\n").encode()
        segments = self.segments()
        path = segments[-1] if segments else self._new_segment([])
        if segments and (
            path.stat().st_size + len(record) > self.segment_bytes
            or self._lines_in(path) >= self.segment_lines
        ):
            path = self._new_segment(segments)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            before = os.fstat(fd).st_size
            try:
                view = memoryview(record)
                while view:
                    done = os.write(fd, view)
                    view = view[done:]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, before)  # never leave half a line behind
                raise
        finally:
            os.close(fd)
        if not segments or path != segments[-1]:
            fsync_dir(self.folder)

    def _enforce_bound(self) -> None:
        segments = self.segments()
        total = sum(p.stat().st_size for p in segments)
        lost = 0
        while total > self.max_bytes and len(segments) > 1:
            oldest = segments.pop(0)
            total -= oldest.stat().st_size
            lost += self._lines_in(oldest)
            oldest.unlink()
        self._note_dropped(lost)

    # --- reading -------------------------------------------------------------------------

    def peek(self) -> tuple[Path, list[str]] | None:
        """The oldest segment and its lines (None when empty); seals the open segment."""
        self.append([])  # retry lines that wait in memory
        segments = self.segments()
        if not segments:
            return None
        oldest = segments[0]
        if len(segments) == 1:
            self._new_segment(segments).touch(mode=0o600)  # seal: appends go elsewhere
            fsync_dir(self.folder)
        lines = []
        for raw in oldest.read_bytes().splitlines():
            try:
                value = json.loads(raw)
            except ValueError:
                continue  # cannot happen for whole lines; never ship garbage
            if isinstance(value, str):
                lines.append(value)
        dropped = self.dropped()
        if dropped:
            lines.insert(0, f"[bastion agent] {dropped} log lines dropped: offline buffer full")
        return oldest, lines

    def commit(self, segment: Path) -> None:
        """The server took ``segment``: delete it (and the dropped count it reported)."""
        segment.unlink(missing_ok=True)
        self.memory_dropped = 0
        (self.folder / DROPPED_FILE).unlink(missing_ok=True)
        for path in self.segments()[:-1]:
            if path.stat().st_size == 0:
                path.unlink()
        fsync_dir(self.folder)


def _cut(line: str) -> str:
    data = line.encode(errors="replace")
    if len(data) <= limits.AGENT_LOG_LINE_MAX:
        return line
    return data[: limits.AGENT_LOG_LINE_MAX].decode(errors="ignore")
