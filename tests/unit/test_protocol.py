"""The control protocol: round trips, exact errors, and fuzzing of the decoders."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onvm.control.protocol import (
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    Event,
    Reply,
    Request,
    decode_reply,
    decode_request,
    encode,
    make_error,
    make_event,
    make_reply,
    make_request,
)
from onvm.errors import ConfigError, ProtocolError


def raw(obj: Any) -> bytes:
    return json.dumps(obj).encode()


# -- round trips ------------------------------------------------------------------

def test_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert MAX_MESSAGE == 65536


def test_encode_is_compact() -> None:
    assert encode({"v": 1, "a": [1, 2]}) == b'{"v":1,"a":[1,2]}'


def test_encode_non_ascii_is_valid_utf8() -> None:
    data = encode(make_event("x", {"s": "caf\u00e9 \ud800"}))
    data.decode("utf-8")
    event = decode_reply(data)
    assert isinstance(event, Event)
    assert event.data == {"s": "caf\u00e9 \ud800"}


def test_request_round_trip() -> None:
    msg = make_request(7, "scale", {"service": 2, "count": 3})
    assert msg == {"v": 1, "id": 7, "op": "scale",
                   "args": {"service": 2, "count": 3}}
    assert decode_request(encode(msg)) == Request(7, "scale", {"service": 2, "count": 3})


def test_request_args_default_to_empty() -> None:
    assert decode_request(b'{"v":1,"id":1,"op":"ping"}') == Request(1, "ping", {})
    assert make_request(1, "ping")["args"] == {}


def test_reply_round_trip() -> None:
    req = Request(4, "status", {})
    msg = make_reply(req, {"nfs": [1, 2]})
    assert msg == {"v": 1, "id": 4, "ok": True, "result": {"nfs": [1, 2]}}
    assert decode_reply(encode(msg)) == Reply(4, True, {"nfs": [1, 2]})
    assert make_reply(9) == {"v": 1, "id": 9, "ok": True, "result": {}}


def test_error_round_trip_from_code() -> None:
    msg = make_error(5, "no_such_nf", "no NF 12")
    assert msg == {"v": 1, "id": 5, "ok": False,
                   "error": {"code": "no_such_nf", "message": "no NF 12"}}
    assert decode_reply(encode(msg)) == Reply(5, False, {}, "no_such_nf", "no NF 12")


def test_error_from_exception_keeps_context() -> None:
    exc = ConfigError("count must be positive").add_context("service 2")
    msg = make_error(5, exc)
    assert msg["error"] == {"code": "bad_request",
                            "message": "service 2: count must be positive"}
    assert make_error(5, exc, "other")["error"]["message"] == "other"


def test_event_round_trip() -> None:
    msg = make_event("stop", {"reason": "shutdown"})
    assert msg == {"v": 1, "event": "stop", "data": {"reason": "shutdown"}}
    assert decode_reply(encode(msg)) == Event("stop", {"reason": "shutdown"})
    assert decode_reply(b'{"v":1,"event":"stop"}') == Event("stop", {})


def test_reply_result_defaults_to_empty() -> None:
    assert decode_reply(b'{"v":1,"id":2,"ok":true}') == Reply(2, True, {})


def test_error_id_zero_is_a_valid_reply() -> None:
    reply = decode_reply(encode(make_error(0, "protocol", "bad")))
    assert isinstance(reply, Reply)
    assert reply.id == 0


def test_unknown_fields_are_ignored() -> None:
    assert decode_request(b'{"v":1,"id":1,"op":"x","later":true}') == Request(1, "x", {})


def test_encode_limit() -> None:
    overhead = len(encode({"s": ""}))
    assert len(encode({"s": "x" * (MAX_MESSAGE - overhead)})) == MAX_MESSAGE
    with pytest.raises(ProtocolError, match=(
            f"^message of {MAX_MESSAGE + 1} bytes exceeds the "
            f"{MAX_MESSAGE}-byte limit$")):
        encode({"s": "x" * (MAX_MESSAGE - overhead + 1)})


@pytest.mark.parametrize("value", [object(), float("nan"), float("inf"), b"x", {1j}])
def test_encode_rejects_non_json(value: Any) -> None:
    with pytest.raises(ProtocolError, match="^message can't be encoded as JSON: "):
        encode({"x": value})


# -- exact decoding errors -----------------------------------------------------------

@pytest.mark.parametrize(("data", "where"), [
    (b"", 0),
    (b'{"v":1,', 7),
    (b'{"v":1} x', 8),
    # The position counts bytes, not characters: \u00e9 takes two.
    ('{"op":"\u00e9",}'.encode(), 11),
])
def test_invalid_json_names_the_byte(data: bytes, where: int) -> None:
    # The text after the position is the json module's and varies by version.
    with pytest.raises(ProtocolError,
                       match=f"^message is not valid JSON at byte {where}: "):
        decode_request(data)


REQUEST_ERRORS = [
    (b'{"v":1}\xff', "message is not valid UTF-8 at byte 7"),
    (b'{"v":1,"\xc3"}', "message is not valid UTF-8 at byte 8"),
    (b"[1]", "bad message: expected a JSON object, got array"),
    (b'"x"', "bad message: expected a JSON object, got string"),
    (b"null", "bad message: expected a JSON object, got null"),
    (b"{}", "bad message: missing field 'v' (protocol version)"),
    (b'{"v":"1"}', "bad message: field 'v' must be an integer"),
    (b'{"v":true}', "bad message: field 'v' must be an integer"),
    (b'{"v":7,"id":1,"op":"x"}', "unsupported protocol version 7 (this side speaks 1)"),
    (b'{"v":1,"op":"x"}', "bad message: missing field 'id'"),
    (b'{"v":1,"id":0,"op":"x"}',
     "bad message: field 'id' must be a positive integer below 2**53"),
    (b'{"v":1,"id":-4,"op":"x"}',
     "bad message: field 'id' must be a positive integer below 2**53"),
    (b'{"v":1,"id":1.5,"op":"x"}',
     "bad message: field 'id' must be a positive integer below 2**53"),
    (b'{"v":1,"id":9007199254740992,"op":"x"}',
     "bad message: field 'id' must be a positive integer below 2**53"),
    (b'{"v":1,"id":true,"op":"x"}',
     "bad message: field 'id' must be a positive integer below 2**53"),
    (b'{"v":1,"id":1}', "bad message: missing field 'op'"),
    (b'{"v":1,"id":1,"op":3}', "bad message: field 'op' must be a string"),
    (b'{"v":1,"id":1,"op":""}', "bad message: field 'op' must not be empty"),
    (b'{"v":1,"id":1,"op":"x","args":[]}', "bad message: field 'args' must be an object"),
    (b'{"v":1,"id":1,"op":"x","op":"y"}', "bad message: duplicate key 'op'"),
    (b'{"v":1,"id":1,"op":"x","args":{"a":NaN}}', "bad message: NaN is not a JSON number"),
    (b'{"v":1,"id":1,"op":"x","args":{"a":-Infinity}}',
     "bad message: -Infinity is not a JSON number"),
    (b'{"v":1,"id":1,"op":"x","args":{"a":1e999}}',
     "bad message: number 1e999 is out of range"),
]


@pytest.mark.parametrize(("data", "message"), REQUEST_ERRORS)
def test_request_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_request(data)
    assert str(info.value) == message
    assert info.value.code == "protocol"


REPLY_ERRORS = [
    (b'{"v":1,"id":1}', "bad message: missing field 'ok'"),
    (b'{"v":1,"id":1,"ok":1}', "bad message: field 'ok' must be a boolean"),
    (b'{"v":1,"id":-1,"ok":true}',
     "bad message: field 'id' must be a non-negative integer below 2**53"),
    (b'{"v":1,"id":1,"ok":true,"result":null}',
     "bad message: field 'result' must be an object"),
    (b'{"v":1,"id":1,"ok":false}', "bad message: missing field 'error'"),
    (b'{"v":1,"id":1,"ok":false,"error":"x"}', "bad message: field 'error' must be an object"),
    (b'{"v":1,"id":1,"ok":false,"error":{"message":"m"}}',
     "bad message: missing field 'error.code'"),
    (b'{"v":1,"id":1,"ok":false,"error":{"code":"","message":"m"}}',
     "bad message: field 'error.code' must not be empty"),
    (b'{"v":1,"id":1,"ok":false,"error":{"code":"c","message":5}}',
     "bad message: field 'error.message' must be a string"),
    (b'{"v":1,"event":5}', "bad message: field 'event' must be a string"),
    (b'{"v":1,"event":""}', "bad message: field 'event' must not be empty"),
    (b'{"v":1,"event":"x","data":[]}', "bad message: field 'data' must be an object"),
    (b'{"v":2,"event":"x"}', "unsupported protocol version 2 (this side speaks 1)"),
]


@pytest.mark.parametrize(("data", "message"), REPLY_ERRORS)
def test_reply_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_reply(data)
    assert str(info.value) == message


def test_oversized_message() -> None:
    data = b" " * (MAX_MESSAGE + 1)
    for decode in (decode_request, decode_reply):
        with pytest.raises(ProtocolError, match=(
                f"^message of {MAX_MESSAGE + 1} bytes exceeds the "
                f"{MAX_MESSAGE}-byte limit$")):
            decode(data)


def test_deep_nesting() -> None:
    data = b"[" * 30000 + b"]" * 30000
    with pytest.raises(ProtocolError, match="^message nests too deeply$"):
        decode_request(data)


def test_huge_integer() -> None:
    data = b'{"v":1,"id":1,"op":"x","args":{"n":' + b"9" * 5000 + b"}}"
    with pytest.raises(ProtocolError, match="^message is not valid JSON: "):
        decode_request(data)


def test_non_bytes_input() -> None:
    with pytest.raises(ProtocolError, match="^message must be bytes, not str$"):
        decode_request("{}")  # type: ignore[arg-type]


def test_memoryview_and_bytearray_accepted() -> None:
    data = encode(make_request(1, "x"))
    assert decode_request(bytearray(data)) == decode_request(memoryview(data))


# -- fuzzing: nothing but ProtocolError escapes --------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)

# Objects shaped like messages, with each field possibly missing or mistyped.
field_values = st.one_of(st.just(1), st.just(0), st.just(True), st.just("x"),
                         st.just(""), st.just({}), st.just([]), st.just(None),
                         st.integers(), json_values)
message_like = st.fixed_dictionaries({}, optional={
    "v": st.one_of(st.just(1), field_values),
    "id": field_values,
    "op": field_values,
    "args": field_values,
    "ok": field_values,
    "result": field_values,
    "error": st.one_of(field_values, st.fixed_dictionaries({}, optional={
        "code": field_values, "message": field_values})),
    "event": field_values,
    "data": field_values,
})


def decodes_or_protocol_error(data: bytes) -> None:
    for decode in (decode_request, decode_reply):
        try:
            decode(data)
        except ProtocolError:
            pass


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_protocol_error(data)


@settings(max_examples=500)
@given(json_values)
def test_fuzz_random_json(value: Any) -> None:
    decodes_or_protocol_error(json.dumps(value).encode())


@settings(max_examples=1000)
@given(message_like)
def test_fuzz_message_shaped(obj: dict[str, Any]) -> None:
    decodes_or_protocol_error(json.dumps(obj).encode())


@settings(max_examples=300)
@given(message_like, st.integers(min_value=0), st.binary(min_size=1, max_size=3))
def test_fuzz_mutated_bytes(obj: dict[str, Any], where: int, junk: bytes) -> None:
    data = json.dumps(obj).encode()
    at = where % (len(data) + 1)
    decodes_or_protocol_error(data[:at] + junk + data[at + len(junk):])


@given(st.integers(min_value=1, max_value=2**53 - 1),
       st.text(min_size=1, max_size=20),
       st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_fuzz_request_round_trip(req_id: int, op: str, args: dict[str, Any]) -> None:
    assert decode_request(encode(make_request(req_id, op, args))) == Request(req_id, op, args)


@given(st.integers(min_value=0, max_value=2**53 - 1),
       st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_fuzz_reply_round_trip(req_id: int, result: dict[str, Any]) -> None:
    assert decode_reply(encode(make_reply(req_id, result))) == Reply(req_id, True, result)
