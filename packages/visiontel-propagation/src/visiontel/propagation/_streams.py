"""Per-stream health at one hop: frames received and frames lost by sequence gap.

Every frame carries its stream's sequence number (:class:`FrameIdentity`), so a hop that
extracts frames can tell which never arrived. The stage API calls :meth:`StreamHealth.observe`
for each frame it extracts (``continue_frame``, each member of ``batch_span``,
``record_frame_latency``); :func:`observe_frame` is the same for a hop that only extracts.

The rules, per stream (the stream id as the frame identity holds it, credentials removed):

* **Reordering**: the hop remembers which of the last ``window`` sequence numbers (below the
  highest seen) arrived. A frame that is late but still inside the window is received, not
  lost; a sequence number counts as lost only once it leaves the window unseen, or when the
  stream ends (:meth:`StreamHealth.end_streams`).
* **Once per hop**: a sequence number already seen inside the window is a duplicate and
  counts nothing, so several stages of one process that handle the same frame (a
  ``continue_frame`` per stage, then ``record_frame_latency``) count it once, as long as
  they handle it within ``window`` frames of each other. One :class:`StreamHealth` is one
  hop: the stage API shares the module's default one, bound to the global meter provider.
* **Restart**: a frame more than ``window`` behind the highest is either very late (it was
  already counted lost) or the source restarted its numbering. One such frame is set aside
  and counts nothing; when the next one follows it closely (within ``window`` after it) the
  source restarted: the old run ends (its missing frames count as lost, like
  :meth:`~StreamHealth.end_streams`) and the new one starts with those two frames, no loss.
  Stragglers of the old run arriving after that are ignored while the new run is far below.
* **Memory**: ``window`` bits and a few integers per stream, for at most ``max_streams``
  streams; past that the least recently seen stream is forgotten, its counts with it (its
  series stops; if it comes back, its counters start again from 0, which ``rate()``
  reads as a counter reset).

Both metrics are observable counters: a frame costs a few integer operations under one
lock, and the totals are read when the metrics are collected (a synchronous ``Counter.add``
would cost several times the bookkeeping on every frame at every hop).

A stream starts at the first frame the hop sees: frames before it (a hop started
mid-stream) are not lost, and one that arrives later, still within the window, moves the
start back to it.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from opentelemetry import metrics
from opentelemetry.context import Context
from opentelemetry.metrics import Observation
from opentelemetry.util.types import AttributeValue

from visiontel._support.env import check_int, env_int
from visiontel.propagation._diag import internal_error
from visiontel.propagation._frame import FrameIdentity, get_frame, strip_credentials
from visiontel.propagation.version import __version__

LOST_METRIC = "visiontel.frames.lost"
RECEIVED_METRIC = "visiontel.frames.received"
ATTR_STREAM_ID = "visiontel.stream.id"
WINDOW_ENV = "VISIONTEL_FRAME_REORDER_WINDOW"
MAX_STREAMS_ENV = "VISIONTEL_FRAME_MAX_STREAMS"
DEFAULT_WINDOW = 128
DEFAULT_MAX_STREAMS = 1024
_MAX_WINDOW = 1 << 16  # 8 KiB of bits per stream at most
_METER = "visiontel.propagation"


Reading = tuple[Mapping[str, AttributeValue], int]
"""(attributes, value) of one series, as an observed object reports it."""


class _Observed:
    """One observable instrument per meter provider, reading every object registered on it.

    The SDK keeps the first instrument of a name on a meter and ignores the callbacks of
    any later one without a word, so objects sharing a provider (two batchers, two hops)
    share one callback, which sums their readings per attribute set. Objects are held
    weakly: one that is garbage collected stops reporting.
    """

    def __init__(
        self,
        name: str,
        kind: Literal["counter", "updown"],
        unit: str,
        description: str,
        read: Callable[[Any], Iterable[Reading]],
    ) -> None:
        self._name, self._kind, self._unit, self._description = name, kind, unit, description
        self._read = read
        self._lock = threading.Lock()
        self._by_provider: weakref.WeakKeyDictionary[metrics.MeterProvider, weakref.WeakSet[Any]]
        self._by_provider = weakref.WeakKeyDictionary()
        self._global: weakref.WeakSet[Any] | None = None  # meter_provider=None: the global one

    def add(self, obj: object, meter_provider: metrics.MeterProvider | None) -> None:
        with self._lock:
            members = (
                self._global if meter_provider is None else self._by_provider.get(meter_provider)
            )
            if members is None:
                members = weakref.WeakSet()
                if meter_provider is None:
                    self._global = members
                else:
                    self._by_provider[meter_provider] = members
                self._create(meter_provider, members)
            members.add(obj)

    def _create(
        self, meter_provider: metrics.MeterProvider | None, members: weakref.WeakSet[Any]
    ) -> None:
        meter = metrics.get_meter(_METER, __version__, meter_provider)
        create = (
            meter.create_observable_counter
            if self._kind == "counter"
            else meter.create_observable_up_down_counter
        )
        create(
            self._name,
            callbacks=[lambda options: self._observe(members)],
            unit=self._unit,
            description=self._description,
        )

    def _observe(self, members: weakref.WeakSet[Any]) -> Iterable[Observation]:
        sums: dict[frozenset[tuple[str, AttributeValue]], list[Any]] = {}
        for obj in list(members):
            for attributes, value in self._read(obj):
                key = frozenset(attributes.items())
                entry = sums.get(key)
                if entry is None:
                    sums[key] = [attributes, value]
                else:
                    entry[1] += value
        return [Observation(value, attributes) for attributes, value in sums.values()]


def _missing(seen: int, highest: int, low: int, high: int) -> int:
    """Sequence numbers in ``low..high`` whose bit (``highest - sequence``) is not set."""
    if high < low:
        return 0
    count = high - low + 1
    bits = (seen >> (highest - high)) & ((1 << count) - 1)
    return count - bits.bit_count()


class _Stream:
    __slots__ = (
        "active", "attributes", "floor", "highest", "lost", "pending", "received", "seen", "stale",
    )  # fmt: skip

    def __init__(self, stream_id: str, sequence: int) -> None:
        self.attributes: Mapping[str, AttributeValue] = {ATTR_STREAM_ID: stream_id}
        self.received = 1
        self.lost = 0
        self.restart(sequence)

    def restart(self, sequence: int) -> None:
        self.active = True  # False once ended: the next frame starts it afresh
        self.highest = sequence
        self.floor = sequence  # no loss is counted below the first frame seen
        self.seen = 1  # bit i: sequence highest - i arrived
        self.pending = -1  # a frame far behind, set aside: a restart if the next follows it
        self.stale = -1  # highest of the run before a restart, while its stragglers may come

    def unseen(self, window: int) -> int:
        """Frames missing in the window now (what ending the stream counts as lost)."""
        low = max(self.floor, self.highest - window + 1)
        return _missing(self.seen, self.highest, low, self.highest)

    def advance(self, sequence: int, window: int) -> int:
        """Move the window up to ``sequence``; return the frames that left it unseen."""
        highest, step = self.highest, sequence - self.highest
        oldest = highest - window + 1
        low = max(self.floor, oldest)
        if step >= window:
            # The whole window leaves, and the numbers between never entered it.
            lost = _missing(self.seen, highest, low, highest) + step - window
            self.seen = 1
        else:
            lost = _missing(self.seen, highest, low, oldest + step - 1)
            self.seen = ((self.seen << step) | 1) & ((1 << window) - 1)
        self.highest = sequence
        self.pending = -1
        if self.stale >= 0 and sequence > self.stale:
            self.stale = -1
        return lost

    def take(self, sequence: int, window: int) -> None:
        """Count the arrival of ``sequence``."""
        if not self.active:
            self.restart(sequence)
            self.received += 1
            return
        highest = self.highest
        if sequence > highest:
            stale = self.stale
            if stale - window < sequence <= stale and sequence - highest > window:
                return  # a straggler of the run before a restart
            self.lost += self.advance(sequence, window)
            self.received += 1
            return
        behind = highest - sequence
        if behind < window:
            bit = 1 << behind
            if self.seen & bit:
                return  # counted already at this hop
            self.seen |= bit
            # A hop that started mid-stream: the stream starts at this earlier frame now.
            self.floor = min(self.floor, sequence)
            self.received += 1
            return
        pending = self.pending
        if 0 <= pending < sequence <= pending + window:
            # Two close frames far behind: the source restarted its numbering.
            self.lost += self.unseen(window)
            self.restart(pending)
            self.stale = highest
            self.lost += self.advance(sequence, window)
            self.received += 2
            return
        self.pending = sequence  # very late (counted lost already), or a restart to confirm

    def end(self, window: int) -> int:
        """The stream ended: count what is missing in the window; return that."""
        lost = self.unseen(window) if self.active else 0
        self.lost += lost
        self.active = False
        return lost


class StreamHealth:
    """Counts ``visiontel.frames.received`` and ``visiontel.frames.lost`` per stream at one hop.

    ``meter_provider`` defaults to the global one. ``window`` (reordering tolerated, in
    frames) and ``max_streams`` (streams remembered) default to
    ``VISIONTEL_FRAME_REORDER_WINDOW`` (128) and ``VISIONTEL_FRAME_MAX_STREAMS`` (1024).
    Thread-safe. The module-level :func:`observe_frame` and :func:`end_streams` use a
    shared instance bound to the global provider, the one the stage API feeds.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        window: int | None = None,
        max_streams: int | None = None,
    ) -> None:
        self.window = (
            env_int(WINDOW_ENV, DEFAULT_WINDOW, minimum=1, maximum=_MAX_WINDOW)
            if window is None
            else check_int("window", window, minimum=1, maximum=_MAX_WINDOW)
        )
        self.max_streams = (
            env_int(MAX_STREAMS_ENV, DEFAULT_MAX_STREAMS, minimum=1)
            if max_streams is None
            else check_int("max_streams", max_streams, minimum=1)
        )
        self._meter_provider = meter_provider
        self._lock = threading.Lock()
        self._streams: OrderedDict[str, _Stream] = OrderedDict()
        self._registered = False

    def _register(self) -> None:
        # On the first frame, so that nothing is created for a hop that sees none.
        self._registered = True
        _RECEIVED.add(self, self._meter_provider)
        _LOST.add(self, self._meter_provider)

    def _readings(self, lost: bool) -> list[Reading]:
        with self._lock:
            return [(s.attributes, s.lost if lost else s.received) for s in self._streams.values()]

    def observe(self, frame: FrameIdentity | Context | None = None) -> None:
        """Count one frame arriving at this hop.

        ``frame`` is an identity, a context carrying one, or None for the current context;
        without a frame identity nothing is counted. Never raises.
        """
        try:
            if isinstance(frame, FrameIdentity):
                # Contexts hold the id without credentials already; a bare identity may not.
                stream_id, sequence = strip_credentials(frame.stream_id), frame.sequence
            else:
                identity = get_frame(frame)
                if identity is None:
                    return
                stream_id, sequence = identity.stream_id, identity.sequence
            self._count(stream_id, sequence)
        except Exception:  # counting must never stop the frame
            internal_error("StreamHealth.observe")

    def observe_stored(self, frame: FrameIdentity) -> None:
        """``observe`` for an identity read from a context (its credentials already
        stripped: the frame's span attributes carry the same one). Never raises."""
        try:
            self._count(frame.stream_id, frame.sequence)
        except Exception:  # counting must never stop the frame
            internal_error("StreamHealth.observe")

    def _count(self, stream_id: str, sequence: int) -> None:
        if not self._registered:
            self._register()
        with self._lock:
            stream = self._streams.get(stream_id)
            if stream is None:
                if len(self._streams) >= self.max_streams:
                    self._streams.popitem(last=False)  # least recently seen: forgotten
                self._streams[stream_id] = _Stream(stream_id, sequence)
            else:
                self._streams.move_to_end(stream_id)
                stream.take(sequence, self.window)

    def end_streams(self, stream_id: str | None = None) -> int:
        """The stream ``stream_id`` (default: every stream) ended at this hop.

        Frames still missing in its window count as lost now, and its window is
        forgotten (its totals are kept): a later frame of it starts it afresh, with no
        loss counted for the numbers in between. Call it when a hop's input ends (end of
        stream, shutdown), or the last ``window`` frames' gaps are never counted. Returns
        the frames counted lost by this call. Never raises.
        """
        try:
            with self._lock:
                if stream_id is None:
                    ended = list(self._streams.values())
                else:
                    one = self._streams.get(stream_id)
                    ended = [] if one is None else [one]
                return sum(stream.end(self.window) for stream in ended)
        except Exception:
            internal_error("StreamHealth.end_streams")
            return 0

    def streams(self) -> list[str]:
        """The stream ids counted now, least recently seen first."""
        with self._lock:
            return list(self._streams)

    def totals(self) -> dict[str, tuple[int, int]]:
        """Stream id -> (frames received, frames lost) so far at this hop."""
        with self._lock:
            return {
                str(s.attributes[ATTR_STREAM_ID]): (s.received, s.lost)
                for s in self._streams.values()
            }


_RECEIVED = _Observed(
    RECEIVED_METRIC,
    "counter",
    "{frame}",
    "Frames of a stream received at this hop (rate() is its FPS)",
    lambda health: health._readings(lost=False),
)
_LOST = _Observed(
    LOST_METRIC,
    "counter",
    "{frame}",
    "Frames of a stream that never reached this hop (sequence gaps)",
    lambda health: health._readings(lost=True),
)
_default = StreamHealth()


def default_health() -> StreamHealth:
    """The hop's shared instance (global meter provider), the one the stage API feeds."""
    return _default


def observe_frame(frame: FrameIdentity | Context | None = None) -> None:
    """Count a frame arriving at this hop (process), for a hop that only extracts.

    ``frame``: an identity, a context from any ``extract_*``, or None for the current
    context. ``continue_frame``, ``batch_span`` and ``record_frame_latency`` already call
    it; calling it again for the same frame counts nothing more.
    """
    _default.observe(frame)


def end_streams(stream_id: str | None = None) -> int:
    """This hop's input of ``stream_id`` (default: every stream) ended; see
    :meth:`StreamHealth.end_streams`."""
    return _default.end_streams(stream_id)
