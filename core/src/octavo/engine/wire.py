"""The messages between API server processes and engine core processes (ZeroMQ frames, msgpack).

The hot path, one `Outputs` per step, is typed msgspec: RequestOutput and EngineStats decode back
into their own dataclasses, so a field added to them crosses without code here. A request's
prompt and parameters travel as `Pickled` extension values: they carry whatever other parts of
Octavo attach to them (LoRA requests, image tensors, per-request options) exactly, without this
module knowing their types. Both ends are the same Octavo build started together, so unpickling
is as trusted as the engine's own code; the sockets are local (ipc) or inside one deployment.
"""

from __future__ import annotations

import pickle
from typing import Any

import msgspec

from octavo.engine.llm_engine import EngineStats
from octavo.outputs import RequestOutput

_PICKLE_EXT = 1  # msgpack extension code of a pickled Python object


def pickled(obj: Any) -> msgspec.msgpack.Ext:
    return msgspec.msgpack.Ext(_PICKLE_EXT, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != _PICKLE_EXT:
        raise ValueError(f"unknown msgpack extension {code} on the engine core's socket")
    return pickle.loads(data)


# ---- API server -> engine core ---------------------------------------------------------------
class Add(msgspec.Struct, tag=True, array_like=True):
    """Add a request: `prompt` and `params` arrive as the caller's own objects (Pickled)."""

    request_id: str
    prompt: Any
    params: Any
    arrival_time: float  # time.monotonic(): one clock for every process of a host


class Abort(msgspec.Struct, tag=True, array_like=True):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag=True, array_like=True):
    """Abort what is left and exit (status 0)."""


# ---- engine core -> API server ---------------------------------------------------------------
class Ready(msgspec.Struct, tag=True, array_like=True):
    """The engine is built (sent once to each API server that says Hello)."""

    num_kv_blocks: int


class Hello(msgspec.Struct, tag=True, array_like=True):
    """The first message of an API server: the core learns its socket identity."""


class Accepted(msgspec.Struct, tag=True, array_like=True):
    """Results of adds, in order: None (queued) or the exception the engine raised (Pickled)."""

    results: list[tuple[str, Any]]


class Outputs(msgspec.Struct, tag=True, array_like=True):
    """One step: the outputs of this API server's requests, and the engine's counters after it."""

    outputs: list[RequestOutput]
    stats: EngineStats


class Dead(msgspec.Struct, tag=True, array_like=True):
    """The engine core failed and exits: every request it held is lost."""

    error: str


ToCore = Add | Abort | Shutdown | Hello
ToServer = Ready | Accepted | Outputs | Dead


def _enc_hook(obj: Any) -> Any:
    # types msgpack lacks (tensors, enums of other modules) go through pickle
    return pickled(obj)


class Codec:
    """Encoder and decoders of both directions (one per thread: msgspec's are not shared)."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._to_core = msgspec.msgpack.Decoder(ToCore, ext_hook=_ext_hook)
        self._to_server = msgspec.msgpack.Decoder(ToServer, ext_hook=_ext_hook)

    def encode(self, msg: msgspec.Struct) -> bytes:
        return self._encoder.encode(msg)

    def to_core(self, data: bytes) -> ToCore:
        return self._to_core.decode(data)

    def to_server(self, data: bytes) -> ToServer:
        return self._to_server.decode(data)
