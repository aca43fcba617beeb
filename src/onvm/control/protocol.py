"""The control protocol: versioned JSON messages over a Unix SOCK_SEQPACKET socket.

Theory of operation
-------------------
One message is one datagram: the kernel keeps message boundaries, so there is
no framing.  A message is a compact UTF-8 JSON object of at most
:data:`MAX_MESSAGE` bytes, and every message carries the protocol version
``"v"``.  Three shapes exist::

    request  {"v": 1, "id": 7, "op": "scale", "args": {...}}           client -> manager
    reply    {"v": 1, "id": 7, "ok": true, "result": {...}}            manager -> client
             {"v": 1, "id": 7, "ok": false,
              "error": {"code": "no_such_nf", "message": "..."}}
    event    {"v": 1, "event": "stop", "data": {...}}                  manager -> client

Request ids are positive and chosen by the client; a reply repeats the id of
its request.  A request that can't be decoded has no trustworthy id, so its
error reply uses id 0, which the client matches to its outstanding request.
Events are pushed unsolicited and may arrive between a request and its reply.

Decoding reads untrusted bytes: it raises nothing but :class:`ProtocolError`,
with a message naming the field and what was expected.  Unknown top-level
fields are ignored so that version 1 can grow compatibly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from onvm.errors import OnvmError, ProtocolError

__all__ = [
    "MAX_MESSAGE",
    "PROTOCOL_VERSION",
    "Event",
    "Reply",
    "Request",
    "decode_reply",
    "decode_request",
    "encode",
    "make_error",
    "make_event",
    "make_reply",
    "make_request",
]

PROTOCOL_VERSION = 1
MAX_MESSAGE = 65536

# Ids travel as JSON numbers; staying below 2**53 keeps them exact in any
# JSON implementation (a web client's doubles included).
_MAX_ID = 2**53 - 1

_Bytes = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request: ``op`` with keyword ``args``, tagged with ``id``."""

    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded reply: ``result`` if ``ok``, else ``error_code``/``error_message``."""

    id: int
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A decoded event pushed by the manager."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)


# -- encoding -----------------------------------------------------------------

def encode(obj: Mapping[str, Any]) -> bytes:
    """Serialize a message to compact UTF-8 JSON.

    Raises ProtocolError if ``obj`` is not JSON-serializable (NaN and infinity
    included: they are not JSON) or encodes to more than MAX_MESSAGE bytes.
    """
    try:
        # ASCII output is valid UTF-8 whatever the strings hold: lone
        # surrogates (legal in JSON escapes, hence in decoded input) would
        # otherwise make the encoding fail.
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"message can't be encoded as JSON: {exc}") from None
    data = text.encode("ascii")
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(
            f"message of {len(data)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    return data


def make_request(req_id: int, op: str, args: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Build a request message."""
    return {"v": PROTOCOL_VERSION, "id": req_id, "op": op,
            "args": dict(args) if args else {}}


def make_reply(req: Request | int, result: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
    """Build the successful reply to ``req`` (a Request or its id)."""
    req_id = req.id if isinstance(req, Request) else req
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": True,
            "result": dict(result) if result else {}}


def make_error(req_id: int, exc_or_code: OnvmError | str,
               message: str | None = None) -> dict[str, Any]:
    """Build an error reply from an OnvmError, or from a code and a message.

    For an exception the message is ``str(exc)``, context included, unless
    ``message`` overrides it.
    """
    if isinstance(exc_or_code, OnvmError):
        code = exc_or_code.code
        text = str(exc_or_code) if message is None else message
    else:
        code = exc_or_code
        text = "" if message is None else message
    return {"v": PROTOCOL_VERSION, "id": req_id, "ok": False,
            "error": {"code": code, "message": text}}


def make_event(name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build an event message."""
    return {"v": PROTOCOL_VERSION, "event": name, "data": dict(data) if data else {}}


# -- decoding -----------------------------------------------------------------

def _bad(text: str) -> NoReturn:
    raise ProtocolError(f"bad message: {text}")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _reject_constant(name: str) -> NoReturn:
    _bad(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    # 1e400 parses as infinity, which could not be encoded back.
    value = float(text)
    if math.isinf(value):
        _bad(f"number {text} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two peers that disagree on which duplicate wins could be made to see
    # different messages; refusing duplicates removes the ambiguity.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            _bad(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _parse(data: _Bytes) -> dict[str, Any]:
    """Bytes -> JSON object with a supported version, or ProtocolError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message must be bytes, not {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > MAX_MESSAGE:
        raise ProtocolError(
            f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE}-byte limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"message is not valid UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates,
                         parse_constant=_reject_constant,
                         parse_float=_finite_float)
    except ProtocolError:
        raise
    except json.JSONDecodeError as exc:
        at = len(text[:exc.pos].encode("utf-8"))
        raise ProtocolError(
            f"message is not valid JSON at byte {at}: {exc.msg}") from None
    except RecursionError:
        raise ProtocolError("message nests too deeply") from None
    except ValueError as exc:  # e.g. an integer with too many digits
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        _bad(f"expected a JSON object, got {_json_type(obj)}")
    if "v" not in obj:
        _bad("missing field 'v' (protocol version)")
    version = obj["v"]
    if not _is_int(version):
        _bad("field 'v' must be an integer")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} "
            f"(this side speaks {PROTOCOL_VERSION})")
    return obj


def _is_int(value: object) -> bool:
    # bool is an int subclass, but true is not a valid id or version.
    return isinstance(value, int) and not isinstance(value, bool)


def _get_id(obj: dict[str, Any], minimum: int) -> int:
    if "id" not in obj:
        _bad("missing field 'id'")
    value = obj["id"]
    if not _is_int(value) or not minimum <= value <= _MAX_ID:
        kind = "a positive" if minimum > 0 else "a non-negative"
        _bad(f"field 'id' must be {kind} integer below 2**53")
    return int(value)


def _get_str(obj: dict[str, Any], key: str, where: str = "") -> str:
    if key not in obj:
        _bad(f"missing field '{where}{key}'")
    value = obj[key]
    if not isinstance(value, str):
        _bad(f"field '{where}{key}' must be a string")
    return value


def _get_name(obj: dict[str, Any], key: str) -> str:
    value = _get_str(obj, key)
    if not value:
        _bad(f"field '{key}' must not be empty")
    return value


def _get_obj(obj: dict[str, Any], key: str, *, required: bool) -> dict[str, Any]:
    if key not in obj:
        if required:
            _bad(f"missing field '{key}'")
        return {}
    value = obj[key]
    if not isinstance(value, dict):
        _bad(f"field '{key}' must be an object")
    return value


def decode_request(data: _Bytes) -> Request:
    """Decode a request; raises only ProtocolError."""
    obj = _parse(data)
    req_id = _get_id(obj, minimum=1)
    op = _get_name(obj, "op")
    args = _get_obj(obj, "args", required=False)
    return Request(req_id, op, args)


def decode_reply(data: _Bytes) -> Reply | Event:
    """Decode a reply or an event; raises only ProtocolError."""
    obj = _parse(data)
    if "event" in obj:
        name = _get_name(obj, "event")
        return Event(name, _get_obj(obj, "data", required=False))
    req_id = _get_id(obj, minimum=0)
    if "ok" not in obj:
        _bad("missing field 'ok'")
    ok = obj["ok"]
    if not isinstance(ok, bool):
        _bad("field 'ok' must be a boolean")
    if ok:
        return Reply(req_id, True, _get_obj(obj, "result", required=False))
    error = _get_obj(obj, "error", required=True)
    code = _get_str(error, "code", "error.")
    if not code:
        _bad("field 'error.code' must not be empty")
    message = _get_str(error, "message", "error.")
    return Reply(req_id, False, {}, code, message)
