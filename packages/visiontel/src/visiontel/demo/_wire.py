"""What travels between the three services: raw bytes with a small fixed header.

gRPC carries them through generic handlers (no generated code); trace context and the
frame identity travel beside them in gRPC metadata, never inside the payload.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

FRAME_METHOD = "/visiontel.demo.Detector/Submit"
RESULT_METHOD = "/visiontel.demo.Tracker/Result"
KIND_FRAME, KIND_END = 0, 1
# magic, kind, sequence, capture time (ns), width, height, channels
_FRAME = struct.Struct("!4sBQQHHB")
# magic, kind, sequence, capture time (ns), detections, length of the model version
_RESULT = struct.Struct("!4sBQQHB")
_FRAME_MAGIC, _RESULT_MAGIC = b"VTF1", b"VTR1"
# A 4K RGB frame is 25 MB; gRPC refuses anything over 4 MB unless told otherwise.
_MESSAGE_LIMITS = [
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
]
DETECTION_FIELDS = 6  # x1, y1, x2, y2, score, class (float32)


class WireError(ValueError):
    """A message that is not one of ours."""


@dataclass(frozen=True)
class Frame:
    kind: int
    sequence: int
    capture_ns: int
    width: int = 0
    height: int = 0
    channels: int = 0
    pixels: bytes = b""

    def pack(self) -> bytes:
        head = _FRAME.pack(
            _FRAME_MAGIC, self.kind, self.sequence, self.capture_ns,
            self.width, self.height, self.channels,
        )  # fmt: skip
        return head + self.pixels

    @classmethod
    def unpack(cls, data: bytes) -> Frame:
        if len(data) < _FRAME.size:
            raise WireError("frame message too short")
        magic, kind, sequence, capture_ns, width, height, channels = _FRAME.unpack_from(data)
        pixels = data[_FRAME.size :]
        if magic != _FRAME_MAGIC or len(pixels) != width * height * channels:
            raise WireError("not a visiontel demo frame")
        return cls(kind, sequence, capture_ns, width, height, channels, pixels)


@dataclass(frozen=True)
class Result:
    kind: int
    sequence: int
    capture_ns: int
    model_version: str = ""
    detections: bytes = b""  # float32 rows of DETECTION_FIELDS

    @property
    def count(self) -> int:
        return len(self.detections) // (4 * DETECTION_FIELDS)

    def pack(self) -> bytes:
        version = self.model_version.encode()[:255]
        head = _RESULT.pack(
            _RESULT_MAGIC, self.kind, self.sequence, self.capture_ns, self.count, len(version)
        )
        return head + version + self.detections

    @classmethod
    def unpack(cls, data: bytes) -> Result:
        if len(data) < _RESULT.size:
            raise WireError("result message too short")
        magic, kind, sequence, capture_ns, count, version_len = _RESULT.unpack_from(data)
        version = data[_RESULT.size : _RESULT.size + version_len].decode(errors="replace")
        body = data[_RESULT.size + version_len :]
        if magic != _RESULT_MAGIC or len(body) != count * 4 * DETECTION_FIELDS:
            raise WireError("not a visiontel demo result")
        return cls(kind, sequence, capture_ns, version, body)


Handler = Callable[[bytes, grpc.ServicerContext], bytes]


def serve(method: str, handler: Handler, port: int, workers: int = 4) -> tuple[grpc.Server, int]:
    """A loopback gRPC server for one unary bytes-in/bytes-out method, and its port.

    ``port`` 0 binds a port the kernel picks, returned here: the caller reports it to
    whoever connects, so no port is chosen before the server holds it. Raises OSError when
    ``port`` cannot be bound (gRPC itself only returns 0 or raises a RuntimeError whose
    text differs between releases).
    """
    service, name = method.strip("/").split("/")
    # Without SO_REUSEPORT (gRPC sets it by default) a port another server holds makes the
    # bind fail, as the launcher's check before the start expects, instead of sharing it.
    options = [*_MESSAGE_LIMITS, ("grpc.so_reuseport", 0)]
    server = grpc.server(ThreadPoolExecutor(workers, thread_name_prefix="grpc"), options=options)
    rpc = grpc.unary_unary_rpc_method_handler(handler)  # no (de)serialisers: raw bytes
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {name: rpc}),))
    try:
        bound = server.add_insecure_port(f"127.0.0.1:{port}")
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"port {port} on 127.0.0.1 is in use")
    server.start()
    return server, bound


def connect(port: int, timeout: float) -> grpc.Channel:
    """A channel to a sibling service, once it answers (it may still be loading)."""
    # The sibling is usually still importing torch: retry often rather than with gRPC's
    # default back-off, which reaches several seconds after a few refused attempts.
    options = [
        *_MESSAGE_LIMITS,
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 250),
    ]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
    grpc.channel_ready_future(channel).result(timeout=timeout)
    return channel
