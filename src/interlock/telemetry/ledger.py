"""``UsageLedger``: usage records written to the database in batches, off the hot path.

``record`` is synchronous and O(1): it appends the record to an in-memory buffer and one
JSON line to a write-ahead *outbox* file with a plain ``os.write``. A background task flushes
the buffer every ``flush_interval`` seconds, or as soon as ``batch_size`` records are waiting,
with one multi-row ``INSERT`` per batch; a request never waits for the database.

What can be lost
    Graceful stop (SIGTERM): nothing. The app's lifespan awaits ``aclose`` before the
    database closes; it writes everything. If the database is down then, the records stay
    in the outbox and are written at the next start.

    ``kill -9`` of the process: nothing that ``record`` has returned from. The outbox line is
    in the kernel's page cache as soon as ``os.write`` returns, and the page cache outlives
    the process; the next start replays the outbox (idempotently: request ids are unique).
    Only requests still in flight at the kill have no row, as they have no answer either.

    Power loss or a kernel crash: at most the records of the last few seconds that the
    kernel had not yet written back (Linux writes dirty pages back within about 30 s,
    ``vm.dirty_expire_centisecs``), plus whatever the outbox could not be written to. There
    is no ``fsync``: one per request would cost more than the gateway itself.

Database outages never fail a request and lose nothing: failed flushes are retried with
exponential backoff (up to ``max_backoff``). Memory is bounded by ``max_buffered`` records;
past that, the oldest records are kept only in their outbox files and read back when the
database returns. Without an outbox (``outbox_dir=None``) the oldest records past the bound
are dropped, counted in ``lost`` and logged.

The outbox layout: ``outbox_dir/<instance>/NNNNNNNNNN.jsonl`` segments, one directory per
running ledger, locked with ``flock`` while it runs. Each flush seals the current segment and
deletes it once its records are in the database. At start, a ledger adopts the segments of
every directory whose lock is free — those of a process that died — and writes them first.
A record the database refuses outright (not an outage: say, a value out of range) is moved to
``outbox_dir/rejected.jsonl`` and logged, so that one bad row cannot block the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog
from sqlalchemy.exc import DataError, IntegrityError

from interlock.settings import Settings
from interlock.store.database import Database
from interlock.store.usage import MAX_ROWS_PER_INSERT, UsageStore
from interlock.telemetry.usage_record import UsageRecord

log = structlog.get_logger("interlock.telemetry.ledger")

OUTBOX_DIR_NAME = "usage-outbox"  # in the data dir
LOCK_NAME = "lock"
REJECTED_NAME = "rejected.jsonl"
SEGMENT_SUFFIX = ".jsonl"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


@dataclass(slots=True)
class _Segment:
    """Records written together: one outbox file (if any) and, unless evicted, a list."""

    path: Path | None
    records: list[UsageRecord] | None  # None: only in the file (evicted from memory)
    on_disk: bool = True  # every record of it reached the file
    evicted: int = 0  # how many records the file holds once ``records`` is None


ROWS_PER_STATEMENT = 64
"""Rows per INSERT statement of a batch (one transaction). Preparing a statement's rows runs
on the event loop, a few µs a row: between statements the loop serves the requests in
flight. A power of two, as ``UsageStore.insert`` sizes its statements so."""


class UsageLedger:
    """The batched, write-ahead usage writer of one process. ``start``, then ``aclose``."""

    def __init__(
        self,
        database: Database,
        *,
        outbox_dir: Path | None,
        flush_interval: float = 1.0,
        batch_size: int = 500,
        max_buffered: int = 100_000,
        max_backoff: float = 30.0,
        close_timeout: float = 10.0,
    ) -> None:
        if flush_interval <= 0 or max_backoff <= 0:
            raise ValueError("flush_interval and max_backoff must be positive")
        if not 1 <= batch_size <= MAX_ROWS_PER_INSERT:
            raise ValueError(f"batch_size must be 1 to {MAX_ROWS_PER_INSERT}")
        if max_buffered < batch_size:
            raise ValueError("max_buffered must be at least batch_size")
        self._store = UsageStore(database)
        self._database = database
        self._root = outbox_dir
        self._interval = flush_interval
        self._batch_size = batch_size
        self._max_buffered = max_buffered
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self._encoder = msgspec.json.Encoder()
        self._decoder = msgspec.json.Decoder(UsageRecord)
        self._dir: Path | None = None  # this ledger's own outbox directory
        self._lock_fd: int | None = None
        self._fd: int | None = None  # the current segment's file
        self._sequence = 0
        self._current = _Segment(None, [])
        self._sealed: deque[_Segment] = deque()
        self._in_memory = 0
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False
        self._warned_disk = False
        self._warned_loss = False
        self.written = 0  # records this ledger inserted
        self.lost = 0  # records dropped (only without an outbox, past max_buffered)
        self.rejected = 0  # records the database refused, moved to rejected.jsonl
        self.duplicates = 0  # records already in the database (a replay after a crash)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Take an outbox directory, adopt those of dead processes, start flushing."""
        if self._root is not None:
            try:
                await asyncio.to_thread(self._take_outbox, self._root)
            except OSError as exc:
                log.warning(
                    "usage_outbox_unavailable",
                    path=str(self._root),
                    reason=f"{type(exc).__name__}: {exc.strerror or exc}",
                    consequence="a kill -9 may lose usage records not yet written",
                )
                self._root = None
        self._task = asyncio.create_task(self._run(), name="usage-ledger")
        if self._sealed:
            self._wake.set()

    async def aclose(self) -> None:
        """Stop the background task and write everything; keep what cannot be written.

        Call before the database closes. Records that the database does not take within
        ``close_timeout`` stay in the outbox for the next start (and are logged).
        """
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        written = False
        try:
            async with asyncio.timeout(self._close_timeout):
                written = await self.flush()
        except TimeoutError:
            pass
        if not written:
            log.error(
                "usage_not_written_at_stop",
                pending=self.pending,
                kept_in=str(self._dir) if self._dir is not None else None,
                consequence=(
                    "written at the next start"
                    if self._dir is not None
                    else "lost: there is no outbox"
                ),
            )
        self._close_segment()
        if self._lock_fd is not None:
            if written and self._dir is not None:
                with contextlib.suppress(OSError):
                    (self._dir / LOCK_NAME).unlink()
                    self._dir.rmdir()
            os.close(self._lock_fd)  # releases the flock: a later start may adopt what is left
            self._lock_fd = None

    # --- the hot path ---------------------------------------------------------------------

    def record(self, record: UsageRecord) -> None:
        """Queue ``record`` for the database. Never blocks, awaits or raises."""
        segment = self._current
        if self._closed:
            self._late(record)
            return
        if self._root is not None:
            try:
                if self._fd is None:
                    self._open_segment()
                assert self._fd is not None
                os.write(self._fd, self._encoder.encode(record) + b"\n")
            except OSError as exc:
                segment.on_disk = False  # this segment must stay in memory
                if not self._warned_disk:
                    self._warned_disk = True
                    log.warning("usage_outbox_write_failed", reason=type(exc).__name__)
        records = segment.records
        assert records is not None  # the current segment is never evicted
        records.append(record)
        self._in_memory += 1
        if len(records) >= self._batch_size:
            self._wake.set()
        if self._in_memory > self._max_buffered:
            self._shed()

    def _late(self, record: UsageRecord) -> None:
        """A record after ``aclose`` (a request outlived the shutdown): into the outbox for
        the next start, as there is no database any more."""
        log.warning("usage_recorded_after_close", request_id=record.request_id)
        if self._dir is None:
            self.lost += 1
            return
        try:
            self._dir.mkdir(mode=0o700, exist_ok=True)  # removed if aclose wrote everything
            fd = os.open(self._dir / f"late{SEGMENT_SUFFIX}", _OPEN_FLAGS, 0o600)
            try:
                os.write(fd, self._encoder.encode(record) + b"\n")
            finally:
                os.close(fd)
        except OSError:
            self.lost += 1

    # --- flushing -------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records not yet confirmed in the database (those only on disk included)."""
        counted = sum(len(s.records) if s.records is not None else s.evicted for s in self._sealed)
        current = self._current.records
        return counted + (len(current) if current is not None else 0)

    async def flush(self) -> bool:
        """Write every record recorded so far; True if they are all in the database."""
        async with self._flush_lock:
            self._seal()
            while self._sealed:
                segment = self._sealed[0]
                records = segment.records
                try:
                    if records is None:
                        assert segment.path is not None
                        records = await asyncio.to_thread(self._read_segment, segment.path)
                    await self._write(records)
                except Exception as exc:  # an outage of any kind: keep everything, retry later
                    self._note_failure(exc)
                    return False
                self._sealed.popleft()
                if segment.records is not None:
                    self._in_memory -= len(segment.records)
                if segment.path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        segment.path.unlink()
            if self._failing:
                self._failing = False
                log.info("usage_ledger_recovered", written=self.written)
            return True

    async def _write(self, records: Sequence[UsageRecord]) -> None:
        for start in range(0, len(records), self._batch_size):
            batch = [msgspec.structs.asdict(r) for r in records[start : start + self._batch_size]]
            rejected_before = self.rejected
            try:
                inserted = await self._store.insert(batch, rows_per_statement=ROWS_PER_STATEMENT)
            except (IntegrityError, DataError):
                # The database refused the data, not the connection: find the bad rows.
                inserted = await self._write_one_by_one(batch)
            self.written += inserted
            self.duplicates += len(batch) - inserted - (self.rejected - rejected_before)

    async def _write_one_by_one(self, rows: list[dict[str, Any]]) -> int:
        inserted = 0
        for row in rows:
            try:
                inserted += await self._store.insert([row])
            except (IntegrityError, DataError) as exc:
                self._reject(row, exc)
        return inserted

    def _reject(self, row: dict[str, Any], exc: Exception) -> None:
        self.rejected += 1
        log.error(
            "usage_record_rejected",
            request_id=row.get("request_id"),
            reason=self._database.describe_failure(exc),
        )
        if self._root is not None:
            with contextlib.suppress(OSError):
                fd = os.open(self._root / REJECTED_NAME, _OPEN_FLAGS, 0o600)
                try:
                    os.write(fd, self._encoder.encode(row) + b"\n")
                finally:
                    os.close(fd)

    def _note_failure(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "usage_ledger_write_failed",
                reason=self._database.describe_failure(exc),
                pending=self.pending,
                consequence="kept and retried with backoff",
            )

    async def _run(self) -> None:
        failures = 0
        while True:
            if failures:
                # Backing off: a full buffer must not turn into a retry per request.
                delay = min(self._max_backoff, self._interval * 2**failures)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._wake.wait()
            self._wake.clear()
            try:
                # Shielded: ``aclose`` cancels this task, and a flush cut off inside its
                # transaction can leave SQLite's write lock held until the connection is
                # collected, so that the closing flush finds the database locked. Shielded,
                # the flush runs to its end and the closing one waits for its lock.
                written = await asyncio.shield(self.flush())
                failures = 0 if written else min(failures + 1, 32)
            except Exception:  # a bug must not stop the ledger: log it and keep going
                log.exception("usage_flush_crashed")
                failures = min(failures + 1, 32)

    # --- segments -------------------------------------------------------------------------

    def _seal(self) -> None:
        """Close the current segment and queue it for writing."""
        current = self._current
        if not current.records:
            return
        self._close_segment()
        self._sealed.append(current)
        self._current = _Segment(None, [])

    def _shed(self) -> None:
        """Bring memory back under ``max_buffered``: keep the oldest records on disk only."""
        if self._root is None:
            self._drop_oldest()
            return
        if not any(s.records is not None and s.on_disk for s in self._sealed):
            if not self._current.on_disk:
                return  # nothing is safely on disk: keep it in memory rather than lose it
            self._seal()
        for segment in self._sealed:
            if self._in_memory <= self._max_buffered:
                break
            if segment.records is not None and segment.on_disk and segment.path is not None:
                self._in_memory -= len(segment.records)
                segment.evicted = len(segment.records)
                segment.records = None

    def _drop_oldest(self) -> None:
        excess = self._in_memory - self._max_buffered
        for segment in (*self._sealed, self._current):
            if excess <= 0:
                break
            records = segment.records
            if not records:
                continue
            dropped = min(excess, len(records))
            del records[:dropped]
            excess -= dropped
            self._in_memory -= dropped
            self.lost += dropped
        if not self._warned_loss:
            self._warned_loss = True
            log.error(
                "usage_records_dropped",
                max_buffered=self._max_buffered,
                reason="the database is unreachable and there is no outbox",
            )

    def _open_segment(self) -> None:
        assert self._dir is not None
        self._sequence += 1
        path = self._dir / f"{self._sequence:010d}{SEGMENT_SUFFIX}"
        self._fd = os.open(path, _OPEN_FLAGS, 0o600)
        self._current.path = path

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read_segment(self, path: Path) -> list[UsageRecord]:
        """The records of an outbox file; a torn last line (a crash mid-write) is skipped."""
        records: list[UsageRecord] = []
        with path.open("rb") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                try:
                    records.append(self._decoder.decode(line))
                except msgspec.DecodeError:
                    log.warning("usage_outbox_line_skipped", path=str(path), line=number)
        return records

    def _take_outbox(self, root: Path) -> None:
        """Create and lock this ledger's directory, then adopt orphaned segments."""
        root.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(4)}"
        # Built under a hidden name and renamed, so no one sees it before it is locked.
        staging = root / f".{name}"
        staging.mkdir(mode=0o700)
        lock_fd = os.open(staging / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        own = root / name
        staging.rename(own)
        self._dir, self._lock_fd = own, lock_fd
        adopted = 0
        for other in sorted(root.iterdir()):
            if other == own or other.name.startswith(".") or not other.is_dir():
                continue
            adopted += self._adopt(other)
        if adopted:
            log.info("usage_outbox_replayed", records=adopted)

    def _adopt(self, other: Path) -> int:
        """Move the segments of a dead ledger's directory into ours; how many records."""
        count = 0
        for mine, records in self._take_segments(other, numbered=True):
            count += len(records)
            self._queue_adopted(mine, records)
        return count

    def _queue_adopted(self, path: Path, records: list[UsageRecord]) -> None:
        if self._in_memory + len(records) > self._max_buffered:
            # Too many to hold: read back from the file when its turn comes.
            self._sealed.append(_Segment(path, None, evicted=len(records)))
        else:
            self._in_memory += len(records)
            self._sealed.append(_Segment(path, records))

    def _take_segments(
        self, other: Path, *, numbered: bool
    ) -> list[tuple[Path, list[UsageRecord]]]:
        """Move the segments of ``other`` into our directory if its ledger is dead.

        ``numbered``: name them in our own sequence (only before the ledger runs: the
        sequence belongs to the event loop afterwards).
        """
        # A live ledger holds the flock of its directory's lock file. No lock file: its
        # ledger closed, leaving records that came in after it stopped.
        assert self._dir is not None
        fd = os.open(other / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return []  # its ledger is alive
            taken = []
            for path in sorted(other.glob(f"*{SEGMENT_SUFFIX}")):
                records = self._read_segment(path)
                if numbered:
                    self._sequence += 1
                    mine = self._dir / f"{self._sequence:010d}{SEGMENT_SUFFIX}"
                else:
                    mine = self._dir / f"adopted-{other.name}-{path.name}"
                path.rename(mine)
                taken.append((mine, records))
            with contextlib.suppress(OSError):  # another starting ledger may race us here
                (other / LOCK_NAME).unlink()
                other.rmdir()
            return taken
        finally:
            os.close(fd)

    async def adopt_orphans(self) -> int:
        """Take over the outbox directories of ledgers that died since this one started
        (another process on the same data directory, killed): their records are written
        with the next flush instead of at the next start. How many records were taken."""
        root, own = self._root, self._dir
        if root is None or own is None or self._closed:
            return 0

        def collect() -> list[tuple[Path, list[UsageRecord]]]:
            taken: list[tuple[Path, list[UsageRecord]]] = []
            for other in sorted(root.iterdir()):
                if other != own and not other.name.startswith(".") and other.is_dir():
                    taken += self._take_segments(other, numbered=False)
            return taken

        async with self._flush_lock:  # no flush walks the queue while segments join it
            taken = await asyncio.to_thread(collect)
            for path, records in taken:
                self._queue_adopted(path, records)
        count = sum(len(records) for _, records in taken)
        if count:
            log.info("usage_outbox_adopted", records=count)
            self._wake.set()
        return count


def build_ledger(settings: Settings, database: Database) -> UsageLedger:
    """The app's ledger, as ``[usage]`` in ``interlock.toml`` configures it (not started)."""
    config = settings.config.usage
    return UsageLedger(
        database,
        outbox_dir=settings.data_dir / OUTBOX_DIR_NAME if config.outbox else None,
        flush_interval=config.flush_interval_ms / 1000,
        batch_size=config.batch_size,
        max_buffered=config.max_buffered,
    )
