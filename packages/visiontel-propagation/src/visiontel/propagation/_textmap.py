"""The carriers as getter/setter adapters of OpenTelemetry's ``TextMapPropagator`` API.

Every text carrier (metadata dicts, HTTP headers, gRPC metadata, message-queue header
lists) follows ``OTEL_PROPAGATORS``: :func:`current` names the propagator to go through,
which is the global one (``opentelemetry.propagate.get_global_textmap()``) with
:class:`~visiontel.propagation.FramePropagator` added unless the global one already
carries ``visiontel-frame`` (``OTEL_PROPAGATORS=...,visiontel_frame``), so the frame
identity always travels and is never written twice.

When the global propagator is exactly OpenTelemetry's default composite (the
``tracecontext`` and ``baggage`` propagators, with or without ``visiontel_frame``),
``current().propagator`` is None and the carriers use the hand-written W3C codec of
:mod:`._w3c` instead, which writes the same fields (tested against OpenTelemetry's
propagators) in about two thirds of the time (docs/benchmarks.md). The choice is
remembered for the global propagator object it was made for and made again when the
global one is replaced (``propagate.set_global_textmap``).

The adapters keep the carriers' limits: values over ``max_value_bytes``, values that
are not text, more than ``max_entries`` entries, and repeated single-valued fields that
disagree are refused and counted through :func:`._diag.reject`, whatever the propagator.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from itertools import islice
from typing import Any, cast

from opentelemetry import propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from visiontel.propagation import _diag, _otel_private
from visiontel.propagation._diag import reject
from visiontel.propagation._frame import FRAME_HEADER, FramePropagator

# Fields that are lists: repeated entries are joined with "," (as HTTP joins list fields).
_JOINABLE = frozenset(("tracestate", "baggage"))
_W3C_FIELDS = ("traceparent", "tracestate", "baggage", FRAME_HEADER)
_W3C_DEFAULTS = (
    frozenset((TraceContextTextMapPropagator, W3CBaggagePropagator)),
    frozenset((TraceContextTextMapPropagator, W3CBaggagePropagator, FramePropagator)),
)


class Choice:
    """What :func:`current` decided for one global propagator object."""

    __slots__ = ("fields", "frame", "glob", "propagator")

    def __init__(
        self,
        glob: object,
        propagator: TextMapPropagator | None,
        frame: FramePropagator | None,
        fields: frozenset[str],
    ) -> None:
        self.glob = glob
        self.propagator = propagator
        """The global propagator, or None where the W3C fast path stands in for it."""
        self.frame = frame
        """The frame propagator to run after it, or None where the global one has it."""
        self.fields = fields
        """Every key written: the propagator's fields and ``visiontel-frame``."""


_choice = Choice(object(), None, None, frozenset())  # replaced on the first call
_FRAME_PROPAGATOR = FramePropagator()


def current() -> Choice:
    """The choice for the global propagator in force (made again when it is replaced)."""
    glob = propagate.get_global_textmap()
    choice = _choice
    if choice.glob is glob:  # the usual case: one identity check per call
        return choice
    return _choose(glob)


def is_w3c_default(propagator: TextMapPropagator) -> bool:
    """Whether ``propagator`` is OpenTelemetry's default tracecontext+baggage composite
    (``visiontel_frame`` may be in it too): exactly those propagator classes, once each."""
    members = _otel_private.composite_members(propagator)
    if members is None:
        return False
    types = [type(member) for member in members]
    return len(types) == len(set(types)) and frozenset(types) in _W3C_DEFAULTS


def _choose(glob: TextMapPropagator) -> Choice:
    global _choice
    if is_w3c_default(glob):
        chosen = Choice(glob, None, None, frozenset(_W3C_FIELDS))
    else:
        try:
            fields = frozenset(glob.fields)
        except Exception:  # a third-party propagator's bug: it still gets to inject
            _diag.internal_error("global propagator fields")
            fields = frozenset()
        # visiontel_frame listed in OTEL_PROPAGATORS: the global one writes the frame itself
        frame = None if FRAME_HEADER in fields else _FRAME_PROPAGATOR
        chosen = Choice(glob, glob, frame, fields | {FRAME_HEADER})
    _choice = chosen
    return chosen


# --- setters -------------------------------------------------------------------------


class _MappingSetter(Setter[MutableMapping[str, Any]]):
    def set(self, carrier: MutableMapping[str, Any], key: str, value: str) -> None:
        carrier[key] = value


class _MetadataSetter(Setter[list[Any]]):
    """gRPC metadata: lowercase keys and printable-ASCII str values, appended."""

    def set(self, carrier: list[Any], key: str, value: str) -> None:
        carrier.append((key.lower(), value))


class _HeaderListSetter(Setter[list[Any]]):
    """Message-queue headers: ``(key, bytes)`` entries, appended."""

    def set(self, carrier: list[Any], key: str, value: str) -> None:
        carrier.append((key, value.encode("utf-8")))


MAPPING_SETTER = _MappingSetter()
METADATA_SETTER = _MetadataSetter()
HEADER_LIST_SETTER = _HeaderListSetter()


# --- getters -------------------------------------------------------------------------


class CarrierGetter(Getter[Any]):
    """A getter that names its carrier in rejections (``carrier_name``) and applies the
    carriers' limits to every value it hands to a propagator."""

    def __init__(self, carrier_name: str) -> None:
        self.carrier_name = carrier_name

    def _texts(self, key: str, values: list[Any]) -> list[str] | None:
        carrier = self.carrier_name
        max_len = _diag._limits.max_value_bytes
        texts: list[str] = []
        for value in values:
            if isinstance(value, str):
                if len(value) > max_len:
                    reject(carrier, "value_too_long", value[:80])
                    return None
                texts.append(value)
            elif isinstance(value, bytes | bytearray | memoryview):
                raw = bytes(value)
                if len(raw) > max_len:
                    reject(carrier, "value_too_long", raw[:80])
                    return None
                try:
                    texts.append(raw.decode("ascii"))
                except UnicodeDecodeError:
                    reject(carrier, "value_not_ascii", raw)
                    return None
            else:
                reject(carrier, "value_not_text", type(value))
                return None
        if len(texts) <= 1 or len(set(texts)) == 1:
            return texts[:1]
        if key in _JOINABLE:
            return [",".join(texts)]
        reject(carrier, f"{key}_duplicate", texts)
        return None


class MappingGetter(CarrierGetter):
    """A metadata dict: exact keys, one value each."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if type(value) is str and len(value) <= _diag._limits.max_value_bytes:
            return [value]  # the usual case, checks inlined
        return self._texts(key, [value])

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        keys = islice(carrier, _diag._limits.max_entries)
        return [key for key in keys if isinstance(key, str)]


class IndexGetter(CarrierGetter):
    """An index made by :func:`index`: lowercase keys, every value of each."""

    def get(self, carrier: Mapping[str, list[Any]], key: str) -> list[str] | None:
        values = carrier.get(key)
        if values is None:
            values = carrier.get(key.lower())  # propagators ask in lowercase: rarely needed
            if values is None:
                return None
        if len(values) == 1:
            value = values[0]
            if type(value) is str and len(value) <= _diag._limits.max_value_bytes:
                return values  # the usual case: index() decoded it
        return self._texts(key, values)

    def keys(self, carrier: Mapping[str, list[Any]]) -> list[str]:
        return list(carrier)


def index(pairs: Iterable[Any], carrier: str) -> dict[str, list[Any]]:
    """Values of a ``(key, value)`` list by lowercase key, scanning at most ``max_entries``.

    Header names are case-insensitive (HTTP, gRPC, most message brokers), so a propagator
    asking for ``x-b3-traceid`` finds ``X-B3-TraceId``. Short ASCII values are decoded to
    str here; anything else is left for the getter to refuse (and count) if asked for.
    """
    found: dict[str, list[Any]] = {}
    limits = _diag._limits
    max_entries, max_len = limits.max_entries, limits.max_value_bytes
    if type(pairs) is list and len(pairs) <= max_entries:
        max_entries = -1  # bounded already: no count to keep
    count = 0
    for pair in pairs:
        if max_entries >= 0:
            if count == max_entries:
                reject(carrier, "too_many_entries", count)
                break
            count += 1
        try:
            key, value = pair
        except (TypeError, ValueError):
            reject(carrier, "entry_malformed", pair)
            continue
        if type(key) is not str:
            if not isinstance(key, bytes):
                continue
            key = key.decode("latin-1")
        if value is None:
            continue
        if type(value) is bytes and len(value) <= max_len and value.isascii():
            value = value.decode("ascii")
        key = key.lower()
        values = found.get(key)
        if values is None:
            found[key] = [value]
        else:
            values.append(value)
    return found


def inject_mapping(
    choice: Choice, carrier: MutableMapping[str, Any], context: Context | None
) -> None:
    """Inject into a dict, removing what a previous frame left under the propagator's keys."""
    propagator, frame = choice.propagator, choice.frame
    assert propagator is not None
    if not carrier:  # the usual case: a fresh dict
        propagator.inject(carrier, context, MAPPING_SETTER)
        if frame is not None:
            frame.inject(carrier, context, MAPPING_SETTER)
        return
    written: dict[str, str] = {}
    propagator.inject(written, context, MAPPING_SETTER)
    if frame is not None:
        frame.inject(written, context, MAPPING_SETTER)
    for key in choice.fields:
        if key in carrier and key not in written:
            del carrier[key]
    carrier.update(written)


def inject_entries(
    choice: Choice, entries: list[Any], context: Context | None, setter: Setter[list[Any]]
) -> None:
    """Append to a ``(key, value)`` list, replacing entries under the keys written (some
    propagators write keys that their ``fields`` cannot list, such as Jaeger's
    ``uberctx-<baggage key>``) and under the propagator's fields."""
    propagator, frame = choice.propagator, choice.frame
    assert propagator is not None
    written: list[Any] = []
    propagator.inject(written, context, setter)
    if frame is not None:
        frame.inject(written, context, setter)
    if entries and _has_stale(entries, choice.fields, written):
        replaced = choice.fields.union([key for key, _ in written])
        entries[:] = [entry for entry in entries if _key_of(entry) not in replaced]
    entries.extend(written)


def _has_stale(entries: list[Any], fields: frozenset[str], written: list[Any]) -> bool:
    """Whether any entry is under a key about to be written (usually none is)."""
    for entry in entries:
        key = entry[0]
        key = key.lower() if type(key) is str else _key_of(entry)
        if key in fields:
            return True
        for new, _ in written:  # a handful: keys the fields cannot name (uberctx-...)
            if new == key:
                return True
    return False


def _key_of(entry: Any) -> object:
    key = entry[0]
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    return key.lower() if isinstance(key, str) else key


def header_pairs(headers: object) -> Iterable[Any] | None:
    """Every (name, value) of an HTTP header container, repeated fields included."""
    if type(headers) is dict:
        return headers.items()
    if type(headers) is list:
        return headers
    for name in ("multi_items", "items"):  # httpx / starlette first: items() joins there
        method = getattr(headers, name, None)
        if callable(method):
            return cast(Iterable[Any], method())
    return cast(Iterable[Any], headers) if _is_pairs(headers) else None


def _is_pairs(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping)


def extract(choice: Choice, carrier: Any, getter: CarrierGetter, base: Context | None) -> Context:
    """The global propagator's ``extract`` through ``getter``, then the frame propagator's.

    A propagator's own bug is reported once and leaves ``base``.
    """
    propagator = choice.propagator
    assert propagator is not None
    try:
        ctx = propagator.extract(carrier, base, getter)
        if choice.frame is not None:
            ctx = choice.frame.extract(carrier, ctx, getter)
        return ctx
    except Exception:
        _diag.internal_error(f"{type(propagator).__name__}.extract ({getter.carrier_name})")
        return Context() if base is None else base
