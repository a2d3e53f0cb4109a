"""Carriers: frame metadata dicts, HTTP headers, gRPC metadata, message-queue headers.

Every carrier follows ``OTEL_PROPAGATORS`` (see :mod:`._textmap`): with OpenTelemetry's
default tracecontext+baggage propagator the hand-written W3C codec below is used, with
any other the carrier is a getter/setter adapter for the global propagator, the frame
identity added. Every ``extract_*`` returns a :class:`~opentelemetry.context.Context`
and never raises: values it cannot use are dropped, logged at debug level and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from itertools import islice
from typing import Any, TypeGuard, cast

from opentelemetry.context import Context

from visiontel.propagation import _diag, _otel_private, _textmap, _w3c
from visiontel.propagation._diag import internal_error, limits, reject

_FIELDS = frozenset(_w3c.FIELDS)
_GRPC_TRACE_BIN = "grpc-trace-bin"
_JOINABLE = frozenset((_w3c.TRACESTATE, _w3c.BAGGAGE))  # list-valued: several fields join


# --- dicts and HTTP headers ---------------------------------------------------------


_DICT_GETTER = _textmap.MappingGetter("dict")
_HTTP_GETTER = _textmap.IndexGetter("http")
_GRPC_GETTER = _textmap.IndexGetter("grpc")
_MQ_GETTER = _textmap.IndexGetter("mq")


def inject_dict(carrier: MutableMapping[str, Any], context: Context | None = None) -> None:
    """Write trace context, baggage and frame identity into a metadata dict.

    The fields are those of the global propagator (``OTEL_PROPAGATORS``), plus
    ``visiontel-frame``. Keys it writes but has nothing for are removed, so a reused
    dict never carries a previous frame's values.
    """
    try:
        choice = _textmap.current()
        if choice.propagator is None:
            inject_w3c_dict(carrier, context)
        else:
            _textmap.inject_mapping(choice, carrier, context)
    except Exception:  # e.g. a read-only mapping: the frame goes on without context
        internal_error("inject_dict")


def inject_w3c_dict(carrier: MutableMapping[str, Any], context: Context | None = None) -> None:
    """:func:`inject_dict` in W3C whatever ``OTEL_PROPAGATORS`` says (hand-off envelopes)."""
    try:
        reused = bool(carrier)
        written = _w3c.encode(context)
        for key, value in written:
            carrier[key] = value
        if reused and len(written) < len(_w3c.FIELDS):
            done = {key for key, _ in written}
            for key in _w3c.FIELDS:
                if key not in done and key in carrier:
                    del carrier[key]
    except Exception:  # e.g. a read-only mapping: the frame goes on without context
        internal_error("inject_dict")


def extract_dict(carrier: Mapping[str, Any] | None, context: Context | None = None) -> Context:
    """Context from a metadata dict written by :func:`inject_dict` (exact, lowercase keys)."""
    choice = _textmap.current()
    if choice.propagator is None:
        return extract_w3c_dict(carrier, context)
    if carrier is not None:
        if type(carrier) is dict or isinstance(carrier, Mapping):
            return _textmap.extract(choice, carrier, _DICT_GETTER, context)
        reject("dict", "not_a_mapping", type(carrier))
    return Context() if context is None else context


def extract_w3c_dict(carrier: Mapping[str, Any] | None, context: Context | None = None) -> Context:
    """:func:`extract_dict` in W3C whatever ``OTEL_PROPAGATORS`` says (hand-off envelopes)."""
    if carrier is not None:
        try:
            if type(carrier) is dict or isinstance(carrier, Mapping):
                found = {key: carrier[key] for key in _w3c.FIELDS if key in carrier}
                if found:
                    return _w3c.decode(found, "dict", context)
            else:
                reject("dict", "not_a_mapping", type(carrier))
        except Exception:
            internal_error("extract_dict")
    return Context() if context is None else context


inject_http = inject_dict
"""Write trace headers into an HTTP header mapping (same as :func:`inject_dict`)."""


def extract_http(headers: object, context: Context | None = None) -> Context:
    """Context from HTTP request headers, whatever their container.

    Accepts case-insensitive header objects (httpx, requests, starlette, aiohttp,
    ``http.client.HTTPMessage``), plain dicts with any key case, and ASGI-style
    ``[(name, value), ...]`` lists of bytes or str. Repeated ``traceparent`` fields
    that disagree are refused, as W3C requires.
    """
    base = Context() if context is None else context
    if headers is None:
        return base
    choice = _textmap.current()
    if choice.propagator is not None:
        pairs = _textmap.header_pairs(headers)
        if pairs is None:
            reject("http", "not_headers", type(headers))
            return base
        try:
            found_all = _textmap.index(pairs, "http")
        except Exception:
            internal_error("extract_http")
            return base
        return _textmap.extract(choice, found_all, _HTTP_GETTER, base)
    try:
        get_all = None if type(headers) is dict else _multi_getter(headers)
        if get_all is not None:
            found: dict[str, object] = {}
            for key in _w3c.FIELDS:
                try:
                    values = get_all(key)
                except KeyError:  # aiohttp's getall() without a default
                    values = None
                if values:
                    bounded = list(islice(values, limits().max_entries))
                    _merge(found, key, bounded, "http")
        elif isinstance(headers, Mapping):
            found = _from_mapping(headers)
        elif _is_pair_list(headers):
            found = _scan(headers, "http")
        else:
            reject("http", "not_headers", type(headers))
            return base
        return _w3c.decode(found, "http", base) if found else base
    except Exception:
        internal_error("extract_http")
        return base


def _multi_getter(headers: object) -> Callable[[str], Any] | None:
    """The "all values of a field" method of multi-valued, case-insensitive header objects."""
    for name in ("get_all", "getall", "get_list", "getlist"):
        method = getattr(headers, name, None)
        if callable(method):
            return cast(Callable[[str], Any], method)
    return None


def _from_mapping(headers: Mapping[Any, Any]) -> dict[str, object]:
    found: dict[str, object] = {}
    for key in _w3c.FIELDS:
        if key in headers:
            found[key] = headers[key]
    if found:
        return found
    # A plain dict from a framework may keep the sender's case ("Traceparent").
    return _scan(headers.items(), "http")


def _merge(found: dict[str, object], key: str, values: list[Any], carrier: str) -> None:
    texts = [_as_text(v, carrier) for v in values]
    if any(t is None for t in texts):
        return
    if len(set(texts)) == 1:
        found[key] = texts[0]
    elif key in _JOINABLE:
        found[key] = ",".join(t for t in texts if t is not None)
    else:
        reject(carrier, f"{key}_duplicate", values)


def _as_text(value: object, carrier: str) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) > limits().max_value_bytes:
            reject(carrier, "value_too_long", raw[:80])
            return None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            reject(carrier, "value_not_ascii", raw)
            return None
    reject(carrier, "value_not_text", type(value))
    return None


def _is_pair_list(value: object) -> TypeGuard[Iterable[Any]]:
    """Could ``value`` be a list of (key, value) pairs (not a str, bytes or mapping)?"""
    if type(value) is list or type(value) is tuple:  # the usual case, without ABC checks
        return True
    return isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping)


def _scan(pairs: Iterable[Any], carrier: str, extra: str | None = None) -> dict[str, object]:
    """Collect our keys from a (key, value) list, bounded by ``max_entries``."""
    first: dict[str, Any] = {}
    repeated: dict[str, list[Any]] | None = None  # rare: only keys seen more than once
    lim = _diag._limits
    max_entries, max_len = lim.max_entries, lim.max_value_bytes
    odd = False
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
        if key not in _FIELDS:  # ours are written lowercase: lower() only for the others
            key = key.lower()
            if key not in _FIELDS and key != extra:
                continue
        if value is None:
            continue
        if key in first:
            if repeated is None:
                repeated = {}
            repeated.setdefault(key, [first[key]]).append(value)
            continue
        if type(value) is not str and key != extra:  # extra keeps its raw (binary) value
            if type(value) is bytes and len(value) <= max_len and value.isascii():
                value = value.decode("ascii")  # the message-queue case, checks inlined
            else:
                odd = True  # _convert() decides (and counts) what this is
        first[key] = value
    if repeated is None and not odd:
        return first  # the usual case: every value already text
    return _convert(first, repeated or {}, carrier, extra)


def _convert(
    first: dict[str, Any], repeated: dict[str, list[Any]], carrier: str, extra: str | None
) -> dict[str, object]:
    """Text values of what :func:`_scan` collected, merging or refusing repeated keys."""
    max_len = limits().max_value_bytes
    found: dict[str, object] = {}
    for key, value in first.items():
        if key == extra:
            if key in repeated:
                reject(carrier, f"{key}_duplicate", repeated[key])
            else:
                found[key] = value
        elif key in repeated:
            _merge(found, key, repeated[key], carrier)
        elif type(value) is str:
            found[key] = value
        elif type(value) is bytes and len(value) <= max_len and value.isascii():
            found[key] = value.decode("ascii")
        else:
            text = _as_text(value, carrier)
            if text is not None:
                found[key] = text
    return found


# --- gRPC metadata ------------------------------------------------------------------


def inject_grpc(metadata: list[tuple[str, str | bytes]], context: Context | None = None) -> None:
    """Append trace entries to outgoing gRPC metadata, replacing any already there.

    The entries are those of the global propagator (``OTEL_PROPAGATORS``), plus
    ``visiontel-frame``. Keys are lowercase and values printable ASCII strings, as gRPC
    requires for keys that do not end in ``-bin``. Pass the list as ``metadata=`` of a
    stub call.
    """
    try:
        choice = _textmap.current()
        if choice.propagator is not None:
            _textmap.inject_entries(choice, metadata, context, _textmap.METADATA_SETTER)
            return
        if metadata and _has_ours(metadata):
            metadata[:] = [entry for entry in metadata if not _ours(entry)]
        metadata.extend(_w3c.encode(context))
    except Exception:
        internal_error("inject_grpc")


def extract_grpc(
    metadata: Iterable[tuple[str, str | bytes]] | None, context: Context | None = None
) -> Context:
    """Context from gRPC metadata (``ServicerContext.invocation_metadata()``).

    When the propagator finds no trace context (no ``traceparent``, no ``x-b3-traceid``
    ...), a ``grpc-trace-bin`` value (the binary format of OpenCensus-era gRPC peers, a
    ``-bin`` key whose value is bytes) is used instead.
    """
    base = Context() if context is None else context
    if metadata is None:
        return base
    try:
        if not _is_pair_list(metadata):
            reject("grpc", "not_a_metadata_list", type(metadata))
            return base
        choice = _textmap.current()
        if choice.propagator is not None:
            return _extract_grpc_with(choice, metadata, base)
        found = _scan(metadata, "grpc", extra=_GRPC_TRACE_BIN)
        binary = found.pop(_GRPC_TRACE_BIN, None)
        if not found and binary is None:
            return base
        ctx = _w3c.decode(found, "grpc", base)
        if _w3c.TRACEPARENT not in found and binary is not None:
            span = _w3c.parse_grpc_trace_bin(binary)
            if span is not None:
                ctx = _w3c.build(ctx, span)
        return ctx
    except Exception:
        internal_error("extract_grpc")
        return base


def _extract_grpc_with(choice: _textmap.Choice, metadata: Iterable[Any], base: Context) -> Context:
    found = _textmap.index(metadata, "grpc")
    ctx = _textmap.extract(choice, found, _GRPC_GETTER, base)
    binary = found.get(_GRPC_TRACE_BIN)
    if binary and not _otel_private.span_context_of(ctx).is_valid:
        if len(binary) > 1 and len(set(binary)) > 1:
            reject("grpc", f"{_GRPC_TRACE_BIN}_duplicate", binary)
        elif span := _w3c.parse_grpc_trace_bin(binary[0]):
            ctx = _w3c.build(ctx, span)
    return ctx


# --- message-queue header lists -----------------------------------------------------


def inject_mq(headers: list[tuple[str, bytes]], context: Context | None = None) -> None:
    """Append entries to a Kafka / Redis-stream / ZeroMQ style ``[(key, bytes)]`` list.

    Entries with our keys already in the list are replaced, never duplicated.
    """
    try:
        choice = _textmap.current()
        if choice.propagator is not None:
            _textmap.inject_entries(choice, headers, context, _textmap.HEADER_LIST_SETTER)
            return
        if headers and _has_ours(headers):
            headers[:] = [entry for entry in headers if not _ours(entry)]
        # Every value encode() writes is ASCII (hex, percent-encoded text, W3C-checked
        # tracestate), so the default UTF-8 encoder gives the same bytes, faster.
        headers.extend([(key, value.encode()) for key, value in _w3c.encode(context)])
    except Exception:
        internal_error("inject_mq")


def _ours(entry: Any) -> bool:
    """Whether a list entry carries one of our keys (which inject replaces)."""
    key = entry[0]
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    return isinstance(key, str) and key.lower() in _FIELDS


_OURS = _FIELDS | {key.encode("ascii") for key in _FIELDS}  # str and bytes forms
_KEY_TYPES = (str, bytes)  # a constant: `str | bytes` would build a Union on every call


def _has_ours(entries: list[Any]) -> bool:
    """Whether any entry has one of our keys: most lists have none, and stay as they are."""
    for entry in entries:
        key = entry[0]
        if isinstance(key, _KEY_TYPES) and key.lower() in _OURS:
            return True
    return False


def extract_mq(
    headers: Sequence[tuple[str | bytes, bytes | str | None]] | Iterable[Any] | None,
    context: Context | None = None,
) -> Context:
    """Context from a message's header list; keys match case-insensitively."""
    if headers is None:
        return Context() if context is None else context
    try:
        if type(headers) is not list and not _is_pair_list(headers):
            reject("mq", "not_a_header_list", type(headers))
        elif (choice := _textmap.current()).propagator is not None:
            found_all = _textmap.index(headers, "mq")
            return _textmap.extract(choice, found_all, _MQ_GETTER, context)
        elif found := _scan(headers, "mq"):
            # None: the usual context is built in one go, without an empty one to copy
            return _w3c.decode(found, "mq", context)
    except Exception:
        internal_error("extract_mq")
    return Context() if context is None else context
