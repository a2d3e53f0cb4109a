"""The signal-independent part: send now, or spool and replay in order.

``export(body)`` runs on the SDK's export thread. It sends the batch itself only when the
link is believed up and nothing is spooled (so a new batch never overtakes the backlog);
otherwise, or when that one attempt fails, the body goes to disk and export() returns: during
an outage an export costs a disk write, and at most one send timeout when the outage
starts. The replayer thread sends the spooled batches oldest first, one POST each, and
waits between failed attempts (0.25 s doubling to ``max_backoff``); it marks the link up
again when the spool is empty. ``shutdown()`` lets it send what is spooled for up to one
export timeout while the endpoint answers, and leaves the rest on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from visiontel.spool import _diag
from visiontel.spool._http import Outcome, Sender
from visiontel.spool._spool import Spool, SpoolBusy

FIRST_BACKOFF_S = 0.25
FLUSH_RETRY_S = 0.1  # between attempts while force_flush() waits for the spool to drain
REOPEN_EVERY_S = 30.0  # how often a process without its spool tries to take it again


class SpoolCore:
    def __init__(
        self,
        signal: str,
        send: Sender,
        *,
        directory: Path,
        max_bytes: int,
        timeout_s: float,
        max_backoff_s: float,
    ) -> None:
        self.signal, self.directory = signal, directory
        self._send, self._max_bytes = send, max_bytes
        self.timeout_s, self.max_backoff_s = timeout_s, max_backoff_s
        self._export_lock = threading.Lock()  # exports in order, one at a time
        self._state = threading.Condition()
        self._work = threading.Event()  # something to send, or stop
        self._retry_now = threading.Event()  # cut a backoff short: flush or stop
        self._stop = False
        self._link_up = True
        self._last_send_failed = False  # shutdown() does not wait on an endpoint known down
        self._flush_until = 0.0
        self.spool: Spool | None = None
        self._next_open = 0.0
        self._thread: threading.Thread | None = None
        self._reported: dict[str, tuple[int, int]] = {}  # reason -> (items, batches) counted
        self._report_lock = threading.Lock()  # both threads report; each loss counted once
        _diag.register_metric()
        self._open()

    # --- spool ownership ---------------------------------------------------------------------
    def _open(self) -> bool:
        self._next_open = time.monotonic() + REOPEN_EVERY_S
        try:
            spool = Spool(self.directory, self._max_bytes)
        except SpoolBusy:
            _diag.log_once(
                f"busy:{self.directory}",
                "visiontel.spool: %s is in use by another process; this one exports %s "
                "without a spool (as the plain OTLP exporter would) and tries again every "
                "%.0f s. Give each application its own VISIONTEL_SPOOL_DIR.",
                self.directory,
                self.signal,
                REOPEN_EVERY_S,
            )
            return False
        except OSError as error:
            _diag.log_once(
                f"oserror:{self.directory}",
                "visiontel.spool: cannot use %s (%s); %s are exported without a spool",
                self.directory,
                error,
                self.signal,
            )
            return False
        self._report(spool)
        self.spool = spool
        if len(spool):
            _diag.logger.info(
                "visiontel.spool: %d %s batch(es) left by an earlier run in %s; replaying",
                len(spool),
                self.signal,
                self.directory,
            )
            self._link_up = False  # the backlog goes first
            self._work.set()
        self._thread = threading.Thread(
            target=self._replay, name=f"visiontel-spool-{self.signal}", daemon=True
        )
        self._thread.start()
        return True

    def has_spool(self) -> bool:
        """Whether this process owns its spool (else the caller exports as usual)."""
        if self.spool is None and not self._stop and time.monotonic() >= self._next_open:
            self._open()
        return self.spool is not None

    # --- the export thread -------------------------------------------------------------------
    def export(self, body: bytes, items: int) -> bool:
        """Send or spool one batch; False only if it could be neither (then it is lost)."""
        spool = self.spool
        assert spool is not None, "has_spool() first"
        with self._export_lock:
            if self._link_up and not len(spool):
                outcome = self._send(body, self.timeout_s)
                if outcome is Outcome.SENT:
                    return True
                if outcome is Outcome.REJECTED:
                    self._lost("rejected", items)
                    return False
                self._link_up = False
                self._last_send_failed = True
            try:
                evicted = spool.append(body, items)
            except OSError as error:
                _diag.log_once(
                    f"write:{self.directory}",
                    "visiontel.spool: writing to %s failed (%s); batches that cannot be "
                    "written are lost",
                    self.directory,
                    error,
                )
                return False
            if evicted:
                self._report(spool)
            self._work.set()
            return True

    # --- the replayer thread -----------------------------------------------------------------
    def _replay(self) -> None:
        backoff = 0.0
        spool = self.spool
        assert spool is not None
        while not self._stop:
            entry = spool.head()
            if entry is None:
                with self._state:
                    self._state.notify_all()  # force_flush() waits for this
                self._work.wait()
                self._work.clear()
                continue
            body = spool.read(entry)
            if body is None:  # evicted meanwhile, or discarded as corrupt
                self._report(spool)
                continue
            outcome = self._send(body, self.timeout_s)
            self._last_send_failed = outcome is Outcome.RETRY
            if outcome is Outcome.RETRY:
                spool.release(entry)
                self._report(spool)
                with self._state:
                    self._state.notify_all()  # shutdown() stops waiting at a failure
                backoff = min(self.max_backoff_s, max(FIRST_BACKOFF_S, backoff * 2))
                wait = FLUSH_RETRY_S if time.monotonic() < self._flush_until else backoff
                self._retry_now.wait(wait)
                self._retry_now.clear()
                continue
            spool.remove(entry)
            if outcome is Outcome.REJECTED:
                self._lost("rejected", entry.items)
                continue
            backoff = 0.0
            with self._export_lock:  # not while export() decides where a batch goes
                if not len(spool):
                    self._link_up = True

    def _report(self, spool: Spool) -> None:
        """Count and log what the spool lost since the last report."""
        tally = spool.tally
        with self._report_lock:
            for reason, items, batches in (
                ("full", tally.full_items, tally.full_batches),
                ("corrupt", tally.corrupt_items, tally.corrupt_batches),
            ):
                done_items, done_batches = self._reported.get(reason, (0, 0))
                if (items, batches) != (done_items, done_batches):
                    self._reported[reason] = (items, batches)
                    _diag.count_loss(
                        self.signal,
                        reason,
                        items - done_items,
                        batches - done_batches,
                        self.directory,
                    )

    def _lost(self, reason: str, items: int) -> None:
        _diag.count_loss(self.signal, reason, items, 1, self.directory)

    # --- flush and shutdown ------------------------------------------------------------------
    def force_flush(self, timeout_s: float) -> bool:
        """Try to send everything spooled within ``timeout_s``; whether the spool is empty."""
        spool = self.spool
        if spool is None:
            return True
        deadline = time.monotonic() + timeout_s
        self._flush_until = deadline
        self._retry_now.set()
        self._wait_until_empty(spool, deadline, lambda: self._stop)
        self._flush_until = 0.0
        return not len(spool)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Send what is spooled while the endpoint answers, for at most one export timeout
        (or ``timeout_s`` where the SDK gives a shorter one), then stop replaying; what is
        not sent stays on disk for the next run."""
        self._drain_before_stop(timeout_s)
        self._stop = True
        self._retry_now.set()
        self._work.set()
        if self._thread is not None:
            # A send in flight ends within its timeout; not waited for beyond a second.
            self._thread.join(timeout=1.0)
        with self._export_lock:
            if self.spool is not None:
                self._report(self.spool)
                self.spool.close()

    def _drain_before_stop(self, timeout_s: float | None) -> None:
        """The plain exporter sends the last batch at exit; so does this one, with the
        backlog before it. Not when the last attempt failed: an application stopping
        during an outage stops at once, as before."""
        spool = self.spool
        if spool is None or self._stop or self._last_send_failed or not len(spool):
            return
        bound = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        deadline = time.monotonic() + bound
        self._wait_until_empty(spool, deadline, lambda: self._last_send_failed)

    def _wait_until_empty(self, spool: Spool, deadline: float, give_up: Callable[[], bool]) -> None:
        """Wake the replayer, then wait for an empty spool, ``give_up()`` or the deadline."""
        self._work.set()
        with self._state:
            while len(spool) and not give_up():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state.wait(min(left, FLUSH_RETRY_S))

    @property
    def link_up(self) -> bool:
        return self._link_up
