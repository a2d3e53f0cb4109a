"""The on-disk spool of one signal: a directory of OTLP request bodies, oldest first.

Each batch is one file ``<20-digit sequence>.batch``: a 24-byte header (magic, item count,
body length, CRC-32 of the body) and the serialized protobuf request body, nothing else (no
headers, no endpoint: nothing secret is ever written). A file is written under a temporary
name, fsynced, renamed into place and the directory fsynced, so a kill at any moment leaves
either a whole batch or a temporary file, which the next open deletes. A file that still
fails its checks when read (a disk error, a hand edit) is discarded and counted, never
raised. One process at a time owns a directory (``flock`` on ``.lock``); the kernel
releases the lock when that process dies, however it dies.
"""

from __future__ import annotations

import collections
import dataclasses
import fcntl
import os
import re
import struct
import threading
import zlib
from pathlib import Path

MAGIC = b"VTSPOOL1"
HEADER = struct.Struct("<8sIQI")  # magic, items, body length, crc32(body)
_NAME = re.compile(r"^(\d{20})\.batch$")
TEMP_PREFIX = ".tmp-"


class SpoolBusy(Exception):
    """Another process holds this spool directory."""


@dataclasses.dataclass(frozen=True)
class Entry:
    seq: int
    path: Path
    size: int  # bytes on disk, header included
    items: int  # spans, metric data points or log records in the batch


@dataclasses.dataclass
class Tally:
    """What this spool lost, by reason (items, batches)."""

    full_items: int = 0
    full_batches: int = 0
    corrupt_batches: int = 0
    corrupt_items: int = 0


class Spool:
    """A bounded FIFO of request bodies in ``directory``, owned by this process."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(self._lock_fd)
            raise SpoolBusy(str(directory)) from error
        self._dir_fd = os.open(directory, os.O_RDONLY)
        self._lock = threading.Lock()
        self._entries: collections.deque[Entry] = collections.deque()
        self._bytes = 0
        self.peak_bytes = 0
        self.tally = Tally()
        self._in_flight: int | None = None  # seq being sent by the replayer
        self._evicted_in_flight = False
        self._closed = False
        self._scan()
        self._next = self._entries[-1].seq + 1 if self._entries else 1

    # --- opening ---------------------------------------------------------------------------
    def _scan(self) -> None:
        found: list[Entry] = []
        for path in self.directory.iterdir():
            if path.name.startswith(TEMP_PREFIX):
                path.unlink(missing_ok=True)  # a write a kill interrupted: never renamed
                continue
            match = _NAME.match(path.name)
            if not match:
                continue
            entry = self._entry_from_header(int(match.group(1)), path)
            if entry is not None:
                found.append(entry)
        found.sort(key=lambda e: e.seq)
        self._entries.extend(found)
        self._bytes = sum(e.size for e in found)
        self.peak_bytes = self._bytes

    def _entry_from_header(self, seq: int, path: Path) -> Entry | None:
        """The entry of a file whose header and length agree, else the file is discarded."""
        try:
            with path.open("rb") as handle:
                head = handle.read(HEADER.size)
                size = os.fstat(handle.fileno()).st_size
        except OSError:
            return None
        if len(head) == HEADER.size:
            magic, items, length, _ = HEADER.unpack(head)
            if magic == MAGIC and size == HEADER.size + length:
                return Entry(seq, path, size, items)
        self.tally.corrupt_batches += 1
        path.unlink(missing_ok=True)
        return None

    # --- writing ---------------------------------------------------------------------------
    def append(self, body: bytes, items: int) -> list[Entry]:
        """Store one batch behind the others; the oldest batches dropped to make room
        (returned, already counted). A batch bigger than the whole spool is dropped itself."""
        size = HEADER.size + len(body)
        if size > self.max_bytes:
            with self._lock:
                self.tally.full_items += items
                self.tally.full_batches += 1
            return [Entry(0, self.directory, size, items)]
        with self._lock:
            evicted = self._make_room(size)
            seq = self._next
            self._next += 1
        for entry in evicted:
            entry.path.unlink(missing_ok=True)
        final = self.directory / f"{seq:020d}.batch"
        temp = self.directory / f"{TEMP_PREFIX}{seq:020d}-{os.getpid()}"
        header = HEADER.pack(MAGIC, items, len(body), zlib.crc32(body))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, header)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)  # the bytes are on disk before the name says the batch is whole
        finally:
            os.close(fd)
        os.rename(temp, final)
        os.fsync(self._dir_fd)  # and the name itself survives a power cut
        with self._lock:
            self._entries.append(Entry(seq, final, size, items))
            self._bytes += size
            self.peak_bytes = max(self.peak_bytes, self._bytes)
        return evicted

    def _make_room(self, size: int) -> list[Entry]:
        """Oldest entries out until ``size`` more bytes fit (lock held)."""
        evicted: list[Entry] = []
        while self._entries and self._bytes + size > self.max_bytes:
            entry = self._entries.popleft()
            self._bytes -= entry.size
            evicted.append(entry)
            if entry.seq == self._in_flight:
                # Being sent right now: counted only if that send fails (release()).
                self._evicted_in_flight = True
                continue
            self.tally.full_items += entry.items
            self.tally.full_batches += 1
        return evicted

    # --- reading ---------------------------------------------------------------------------
    def head(self) -> Entry | None:
        """The oldest batch, marked in flight (release() or remove() ends that)."""
        with self._lock:
            if not self._entries:
                return None
            entry = self._entries[0]
            self._in_flight, self._evicted_in_flight = entry.seq, False
            return entry

    def read(self, entry: Entry) -> bytes | None:
        """The body of ``entry``, or None if it is gone or fails its checks (then discarded
        and counted)."""
        try:
            data = entry.path.read_bytes()
        except FileNotFoundError:
            self.release(entry)  # evicted meanwhile: counted there
            return None
        except OSError:
            data = b""
        if len(data) >= HEADER.size:
            magic, _, length, crc = HEADER.unpack_from(data)
            body = data[HEADER.size :]
            if magic == MAGIC and len(body) == length and zlib.crc32(body) == crc:
                return body
        with self._lock:
            self.tally.corrupt_batches += 1
            self.tally.corrupt_items += entry.items
        self._forget(entry)
        return None

    def remove(self, entry: Entry) -> None:
        """``entry`` is done with (delivered, or refused for good)."""
        self._forget(entry)

    def release(self, entry: Entry) -> None:
        """A send of ``entry`` failed: it stays first, unless evicted while in flight."""
        with self._lock:
            if self._in_flight == entry.seq and self._evicted_in_flight:
                self.tally.full_items += entry.items
                self.tally.full_batches += 1
            self._in_flight, self._evicted_in_flight = None, False

    def _forget(self, entry: Entry) -> None:
        with self._lock:
            if self._entries and self._entries[0].seq == entry.seq:
                self._entries.popleft()
                self._bytes -= entry.size
            self._in_flight, self._evicted_in_flight = None, False
        entry.path.unlink(missing_ok=True)

    # --- state -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        """Let another process have the directory; what is spooled stays."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        os.close(self._dir_fd)
        os.close(self._lock_fd)  # releases the flock
