"""The web API as functions: every endpoint, and every refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from onvm import latency
from onvm.control import ops
from onvm.errors import LifecycleError, OnvmError
from onvm.web.api import Api, Request
from onvm.web.sampler import add_rates, services

TOKEN = "s3cret-token"
HOST = "127.0.0.1:8080"


def nf(i: int, name: str, service: int, rx: int) -> dict[str, Any]:
    return {"id": i, "name": name, "service": service, "instance": 0, "pid": 100 + i, "state": "running",
            "rx": rx, "tx": rx, "rx_ring": 3, "tx_ring": 0,
            "actions": {"drop": 0, "next": rx, "tonf": 0, "out": 0}, "drops": {"ring_full": 2},
            "reclaimed": 0, "busy_ns": rx * 50, "latency": latency.summary(None)}


def worker(i: int, role: str, packets: int) -> dict[str, Any]:
    return {"id": i, "role": role, "index": 0, "cpu": None, "packets": packets, "busy_ns": packets * 30,
            "sleeps": 0}


def port(i: int, kind: str, rx: int, tx: int) -> dict[str, Any]:
    return {"id": i, "uri": kind, "kind": kind, "rx": rx, "rx_bytes": rx * 60, "tx": tx,
            "tx_bytes": tx * 60, "drops": {}, "done": False, "error": "", "latency": latency.summary(None)}


def make_status(rx: int) -> dict[str, Any]:
    return {
        "manager": {"name": "m", "pid": 1, "uptime": 3.0, "region": "/dev/shm/x", "layout": 1,
                    "protocol": 1, "default_chain": "1,out:1", "ring_size": 4096, "web": ""},
        "pool": {"free": 10, "total": 64, "slot_size": 2048},
        "ports": [port(0, "gen", rx, 0), port(1, "null", 0, rx)],
        "workers": [worker(0, "rx", rx), worker(1, "tx", rx)],
        "nfs": [nf(1, "fwd", 1, rx), nf(2, "mon", 1, rx // 2)],
        "left": [],
        "events": [],
    }


class FakeSource:
    def __init__(self) -> None:
        prev = make_status(100)
        add_rates(prev, None, 0)
        st = make_status(300)
        add_rates(st, prev, 2.0)
        self.sample = {"time": 1.0, "status": st, "services": services(st),
                       "chains": [{"id": 0, "hops": [{"action": "tonf", "dest": 1}]}],
                       "rules": [{"priority": 1}], "flows": []}
        self.log = [(1.0, "a"), (2.0, "b"), (3.0, "c")]

    def latest(self) -> dict[str, Any]:
        return self.sample

    def history(self) -> list[dict[str, Any]]:
        return [{"time": 1.0, "ports": {}, "nfs": {}}]

    def events(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        out = [{"id": i + 1, "time": t, "text": x} for i, (t, x) in enumerate(self.log)]
        return [e for e in out if e["id"] > since][-limit:]


class FakeControl:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, op: ops.Op) -> dict[str, Any]:
        args = op.args()
        self.calls.append((op.op_name, args))
        if op.op_name == "stop_nf" and args["nf_id"] == 42:
            raise OnvmError("no NF with id 42", code="no_such_nf")
        if op.op_name == "stop_nf" and args["nf_id"] == 7:
            raise LifecycleError("can't stop NF 7 in state STOPPED")
        return {"ok": op.op_name}


@pytest.fixture
def api() -> Api:
    return Api(FakeSource(), FakeControl(), TOKEN, {HOST, "localhost:8080"})


def call(api: Api, method: str, path: str, query: dict[str, str] | None = None, body: bytes = b"",
         token: str | None = None, **headers: str) -> tuple[int, Any, dict[str, str]]:
    h = {"host": HOST, **{k.replace("_", "-"): v for k, v in headers.items()}}
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    r = api.handle(Request(method, path, query or {}, h, body))
    data = json.loads(r.body) if r.content_type == "application/json" else r.body.decode()
    return r.status, data, r.headers


def test_index_lists_every_route(api):
    code, data, _ = call(api, "GET", "/api")
    assert code == 200
    paths = {(e["method"], e["path"]) for e in data["endpoints"]}
    for p in ("/api/status", "/api/nfs", "/api/services", "/api/ports", "/api/chains", "/api/rules",
              "/api/flows", "/api/events", "/metrics"):
        assert ("GET", p) in paths
    assert all(e["token"] for e in data["endpoints"] if e["method"] == "POST")


def test_status(api):
    code, data, _ = call(api, "GET", "/api/status")
    assert code == 200
    assert data["manager"]["name"] == "m"
    assert [s["id"] for s in data["services"]] == [1]
    assert data["chains"][0]["hops"] == [{"action": "tonf", "dest": 1}]


def test_nfs_and_rates(api):
    code, data, _ = call(api, "GET", "/api/nfs")
    assert code == 200 and [n["name"] for n in data] == ["fwd", "mon"]
    assert data[0]["rx_pps"] == 100.0  # (300 - 100) / 2 s
    code, one, _ = call(api, "GET", "/api/nfs/2")
    assert code == 200 and one["name"] == "mon"


@pytest.mark.parametrize("path,status", [("/api/nfs/42", 404), ("/api/nfs/x", 400), ("/api/nfs/-1", 400),
                                         ("/api/ports/9", 404), ("/api/ports/a1", 400),
                                         ("/api/services/5", 404), ("/api/services/1e3", 400),
                                         ("/api/nothing", 404), ("/api/nfs/1/extra", 404)])
def test_bad_lookups(api, path, status):
    code, data, _ = call(api, "GET", path)
    assert code == status and data["error"]


def test_services(api):
    code, data, _ = call(api, "GET", "/api/services")
    assert code == 200 and data[0]["rx"] == 450 and len(data[0]["instances"]) == 2
    code, one, _ = call(api, "GET", "/api/services/1")
    assert code == 200 and one["id"] == 1


def test_ports(api):
    code, data, _ = call(api, "GET", "/api/ports")
    assert code == 200 and data[0]["rx_pps"] == 100.0 and data[1]["tx_pps"] == 100.0
    code, one, _ = call(api, "GET", "/api/ports/1")
    assert code == 200 and one["kind"] == "null"


def test_chains_rules_flows_history(api):
    assert call(api, "GET", "/api/chains")[1][0]["id"] == 0
    # rules come a page at a time from the manager: a rule set may be too big for a sample
    assert call(api, "GET", "/api/rules")[1] == {"ok": "rule_list"}
    assert call(api, "GET", "/api/rules", {"offset": "400", "limit": "50"})[0] == 200
    assert api.control.calls[-2:] == [("rule_list", {"offset": 0, "limit": ops.RULE_PAGE}),
                                      ("rule_list", {"offset": 400, "limit": 50})]
    assert call(api, "GET", "/api/rules", {"limit": "100000"})[0] == 400
    assert call(api, "GET", "/api/rules", {"offset": "x"})[0] == 400
    assert call(api, "GET", "/api/flows")[1] == []
    assert call(api, "GET", "/api/history")[1][0]["time"] == 1.0


def test_events(api):
    assert [e["text"] for e in call(api, "GET", "/api/events")[1]] == ["a", "b", "c"]
    assert [e["id"] for e in call(api, "GET", "/api/events", {"since": "1"})[1]] == [2, 3]
    assert call(api, "GET", "/api/events", {"since": "x"})[0] == 400
    assert call(api, "GET", "/api/events", {"limit": "0"})[0] == 400


def test_metrics_endpoint(api):
    code, text, _ = call(api, "GET", "/metrics")
    assert code == 200 and "onvm_nf_rx_packets_total" in text


def test_wrong_method(api):
    code, data, headers = call(api, "DELETE", "/api/nfs")
    assert code == 405 and headers["Allow"] == "GET"
    code, _, headers = call(api, "GET", "/api/nfs/1/stop")
    assert code == 405 and headers["Allow"] == "POST"


def test_changes_need_the_token(api):
    code, data, headers = call(api, "POST", "/api/nfs/1/stop")
    assert code == 401 and "WWW-Authenticate" in headers and "token" in data["error"]
    assert call(api, "POST", "/api/nfs/1/stop", token="wrong")[0] == 403
    assert call(api, "POST", "/api/nfs/1/stop", authorization=f"Basic {TOKEN}")[0] == 403
    assert call(api, "POST", "/api/shutdown")[0] == 401
    assert call(api, "POST", "/api/control/status")[0] == 401
    assert api.control.calls == []  # nothing reached the manager


def test_stop_nf_with_the_token(api):
    code, data, _ = call(api, "POST", "/api/nfs/1/stop", token=TOKEN)
    assert code == 200 and api.control.calls == [("stop_nf", {"nf_id": 1})]
    assert call(api, "POST", "/api/nfs/42/stop", token=TOKEN)[0] == 404
    assert call(api, "POST", "/api/nfs/99/stop", token=TOKEN)[0] == 400  # no such NF id at all
    assert call(api, "POST", "/api/nfs/7/stop", token=TOKEN)[0] == 409
    assert call(api, "POST", "/api/nfs/abc/stop", token=TOKEN)[0] == 400
    assert call(api, "POST", "/api/nfs/1/stop", body=b"{not json", token=TOKEN)[0] == 400
    assert call(api, "POST", "/api/nfs/1/stop", body=b"[1]", token=TOKEN)[0] == 400


def test_shutdown_and_generic_control(api):
    assert call(api, "POST", "/api/shutdown", token=TOKEN)[0] == 200
    body = b'{"service": 2, "policy": "round-robin"}'
    code, data, _ = call(api, "POST", "/api/control/service_policy", body=body, token=TOKEN)
    assert code == 200
    assert api.control.calls[-1] == ("service_policy", {"service": 2, "policy": "round-robin"})
    calls = len(api.control.calls)
    # The operations table checks the arguments before anything reaches the manager.
    code, data, _ = call(api, "POST", "/api/control/status", body=b'{"verbose": true}', token=TOKEN)
    assert code == 400 and "unknown argument 'verbose'" in data["error"]
    code, data, _ = call(api, "POST", "/api/control/service_policy", body=b'{"service": 2, "policy": "x"}',
                         token=TOKEN)
    assert code == 400 and "policy 'x'" in data["error"]
    for op in ("register", "start", "stopping", "hello", "subscribe", "packet_in", "Bad-Op", "x" * 300):
        assert call(api, "POST", f"/api/control/{op}", token=TOKEN)[0] == 400
    assert len(api.control.calls) == calls


def test_foreign_origin_and_host_are_refused(api):
    code, data, _ = call(api, "POST", "/api/nfs/1/stop", token=TOKEN, origin="http://evil.example")
    assert code == 403 and "origin" in data["error"]
    assert call(api, "POST", "/api/nfs/1/stop", token=TOKEN, origin=f"http://{HOST}")[0] == 200
    r = api.handle(Request("GET", "/api/status", {}, {"host": "evil.example:8080"}))
    assert r.status == 421
    r = api.handle(Request("GET", "/api/status", {}, {"host": "localhost:8080"}))
    assert r.status == 200


def test_no_cors_header_anywhere(api):
    for path in ("/api/status", "/metrics", "/api/nfs/42"):
        r = api.handle(Request("GET", path, {}, {"host": HOST, "origin": "http://evil.example"}))
        assert not any(k.lower().startswith("access-control") for k in r.headers)


def test_extra_routes_can_be_added(api):
    from onvm.web.api import ok

    @api.route("GET", "/api/things/{thing}")
    def thing(req, thing):
        return ok({"thing": thing})

    assert call(api, "GET", "/api/things/x")[1] == {"thing": "x"}


def test_a_capture_is_a_pcap_download_that_needs_the_token():
    asked: list[tuple[ops.CaptureStart, float]] = []

    def capture(op: ops.CaptureStart, seconds: float) -> tuple[bytes, dict[str, Any]]:
        asked.append((op, seconds))
        return b"\xd4\xc3\xb2\xa1pcap", {"captured": 3, "dropped": 1}

    api = Api(FakeSource(), FakeControl(), TOKEN, {HOST}, capture)
    body = b'{"service": 2, "direction": "tx", "filter": "udp", "count": 3, "seconds": 2}'
    assert call(api, "POST", "/api/capture", body=body)[0] == 401 and asked == []
    auth = {"host": HOST, "authorization": f"Bearer {TOKEN}"}
    r = api.handle(Request("POST", "/api/capture", {}, auth, body))
    assert r.status == 200 and r.body == b"\xd4\xc3\xb2\xa1pcap"
    assert r.content_type == "application/vnd.tcpdump.pcap"
    assert r.headers["X-Onvm-Captured"] == "3" and r.headers["X-Onvm-Dropped"] == "1"
    assert "attachment" in r.headers["Content-Disposition"]
    assert asked == [(ops.CaptureStart(service=2, direction="tx", filter="udp", count=3), 2.0)]
    for bad, message in ((b'{"service": 2, "seconds": 0}', "'seconds' must be a number"),
                         (b'{"service": 2, "seconds": 61}', "'seconds' must be a number"),
                         (b'{"service": 2, "seconds": "5"}', "'seconds' must be a number"),
                         (b'{"service": 2, "port": 1}', "capture one tap point"),
                         (b'{"service": 2, "filter": "tcp dst port x"}', "expected a port")):
        code, data, _ = call(api, "POST", "/api/capture", body=bad, token=TOKEN)
        assert code == 400 and message in data["error"], (bad, data)
    assert len(asked) == 1
    # A capture streams to the connection that asked: not a plain control operation of the web.
    assert call(api, "POST", "/api/control/capture_start", body=b'{"service": 2}', token=TOKEN)[0] == 400
    assert call(Api(FakeSource(), FakeControl(), TOKEN, {HOST}), "POST", "/api/capture", body=body,
                token=TOKEN)[0] == 404
