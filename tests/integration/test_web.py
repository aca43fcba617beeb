"""The manager's web endpoint over real HTTP, with traffic flowing."""

from __future__ import annotations

import http.client
import json
import os
import stat
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from onvm.web.server import MAX_CONNECTIONS_PER_CLIENT, MAX_STREAMS_PER_CLIENT
from tests.integration.conftest import status, wait_for

TRAFFIC = ["--port", "gen:size=64,flows=32,rate=20k", "--port", "null", "--default-chain", "1,out:1",
           "--web", "127.0.0.1:0"]


class Web:
    def __init__(self, url: str, token_path: str) -> None:
        u = urllib.parse.urlsplit(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.token_path = token_path

    @property
    def token(self) -> str:
        with open(self.token_path, encoding="ascii") as f:
            return f.read().strip()

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, path: str) -> Any:
        code, _, body = self.request("GET", path)
        assert code == 200, (path, code, body)
        return json.loads(body)


@pytest.fixture
def web(deploy, runtime):
    dep = deploy(TRAFFIC)
    dep.start_nf(["simple_forward", "--service", "1"])
    dep.wait_running(1)
    url = status(dep.name)["manager"]["web"]
    assert url.startswith("http://127.0.0.1:")
    w = Web(url, os.path.join(runtime, f"onvm-{dep.name}.web-token"))
    wait_for(lambda: any(n["rx"] > 0 for n in w.json("/api/nfs")), what="traffic in the API")
    return dep, w


def test_token_file_is_private(web):
    dep, w = web
    st = os.stat(w.token_path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert len(w.token) >= 32


def test_read_endpoints(web):
    dep, w = web
    st = w.json("/api/status")
    assert st["manager"]["name"] == dep.name and st["manager"]["web"]
    nfs = w.json("/api/nfs")
    assert [n["name"] for n in nfs] == ["simple_forward"]
    assert w.json(f"/api/nfs/{nfs[0]['id']}")["service"] == 1
    assert w.json("/api/services")[0]["instances"][0]["name"] == "simple_forward"
    assert w.json("/api/services/1")["id"] == 1
    assert [p["kind"] for p in w.json("/api/ports")] == ["gen", "null"]
    assert w.json("/api/ports/1")["kind"] == "null"
    assert w.json("/api/chains")[0]["hops"] == [{"action": "tonf", "dest": 1}, {"action": "out", "dest": 1}]
    assert w.json("/api/rules") == {"rules": [], "total": 0, "offset": 0} and w.json("/api/flows") == []
    assert any("running" in e["text"] for e in w.json("/api/events"))
    assert all("token:" not in e["text"] for e in w.json("/api/events"))  # the token stays private
    assert isinstance(w.json("/api/history"), list)
    code, headers, body = w.request("GET", "/")
    assert code == 200 and b"/static/app.js" in body and "content-security-policy" in headers
    for path in ("/static/app.js", "/static/style.css"):
        assert w.request("GET", path)[0] == 200
    assert w.request("GET", "/static/../manager.py")[0] == 404


def test_counters_move_and_latency_is_recorded(web):
    dep, w = web
    first = w.json("/api/ports/1")["tx"]
    wait_for(lambda: w.json("/api/ports/1")["tx"] > first, what="the output counter to move")
    wait_for(lambda: w.json("/api/ports/1")["latency"]["count"] > 0, what="end-to-end latency")
    nf = w.json("/api/nfs")[0]
    lat = nf["latency"]
    assert lat["count"] > 0 and 0 < lat["p50_us"] <= lat["p99_us"] <= lat["max_us"]
    assert nf["rx_pps"] > 0


def test_refusals(web):
    dep, w = web
    nf_id = w.json("/api/nfs")[0]["id"]
    code, headers, body = w.request("POST", f"/api/nfs/{nf_id}/stop")
    assert code == 401 and "www-authenticate" in headers
    assert w.request("POST", f"/api/nfs/{nf_id}/stop", headers={"Authorization": "Bearer nope"})[0] == 403
    assert w.request("POST", "/api/shutdown")[0] == 401
    auth = {"Authorization": f"Bearer {w.token}"}
    evil = {**auth, "Origin": "http://evil.example"}
    assert w.request("POST", f"/api/nfs/{nf_id}/stop", headers=evil)[0] == 403
    assert w.request("POST", "/api/nfs/abc/stop", headers=auth)[0] == 400
    assert w.request("POST", "/api/nfs/60/stop", headers=auth)[0] == 404
    assert w.request("POST", f"/api/nfs/{nf_id}/stop", body=b"{oops", headers=auth)[0] == 400
    assert w.request("POST", f"/api/nfs/{nf_id}/stop", body=b"x" * 70000, headers=auth)[0] == 413
    assert w.request("GET", "/api/nfs/x")[0] == 400
    assert w.request("GET", "/api/nope")[0] == 404
    assert w.request("DELETE", "/api/nfs")[0] == 405
    assert w.request("GET", "/api/status", headers={"Host": "rebound.example"})[0] == 421
    code, headers, _ = w.request("GET", "/api/status", headers={"Origin": "http://evil.example"})
    assert code == 200 and not any(k.startswith("access-control") for k in headers)
    code, headers, _ = w.request("OPTIONS", "/api/shutdown", headers={"Origin": "http://evil.example"})
    assert code == 405 and not any(k.startswith("access-control") for k in headers)
    assert status(dep.name)["nfs"][0]["state"] == "running"  # nothing above changed anything


def test_stop_nf_with_the_token(web):
    dep, w = web
    nf_id = w.json("/api/nfs")[0]["id"]
    auth = {"Authorization": f"Bearer {w.token}"}
    code, _, body = w.request("POST", f"/api/nfs/{nf_id}/stop", headers=auth)
    assert code == 200, body
    wait_for(lambda: not status(dep.name)["nfs"], what="the NF to leave")
    assert dep.procs[1].wait(timeout=10) == 0
    wait_for(lambda: any("stopped" in e["text"] for e in w.json("/api/events")), what="the stop event")


def test_metrics_parse(web):
    dep, w = web
    wait_for(lambda: w.json("/api/nfs")[0]["latency"]["count"] > 0, what="latency")
    import time

    time.sleep(0.6)  # one more sample
    code, headers, body = w.request("GET", "/metrics")
    assert code == 200 and headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert fams["onvm_nf_rx_packets"].samples[0].value > 0
    assert fams["onvm_nf_rx_packets"].samples[0].labels["name"] == "simple_forward"
    assert fams["onvm_port_tx_packets"].type == "counter"
    assert fams["onvm_service_instances"].samples[0].value == 1
    hist = fams["onvm_nf_latency_seconds"]
    count = [s.value for s in hist.samples if s.name.endswith("_count")][0]
    inf = [s.value for s in hist.samples if s.labels.get("le") == "+Inf"][0]
    assert count == inf > 0
    assert "onvm_port_latency_seconds" in fams


def test_live_stream(web):
    dep, w = web
    c = http.client.HTTPConnection(w.host, w.port, timeout=10)
    try:
        c.request("GET", "/api/stream")
        r = c.getresponse()
        assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
        events: list[tuple[str, Any]] = []
        kind = ""
        while sum(1 for k, _ in events if k == "sample") < 2:
            line = r.fp.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
        samples = [d for k, d in events if k == "sample"]
        assert samples[1]["time"] > samples[0]["time"]
        assert samples[-1]["status"]["nfs"][0]["name"] == "simple_forward"
        assert any(k == "log" for k, _ in events)
    finally:
        c.close()


def test_shutdown_over_the_web_ends_streams_and_removes_the_token(web):
    dep, w = web
    stream = http.client.HTTPConnection(w.host, w.port, timeout=10)
    stream.request("GET", "/api/stream")
    r = stream.getresponse()
    assert r.status == 200
    code, _, _ = w.request("POST", "/api/shutdown", headers={"Authorization": f"Bearer {w.token}"})
    assert code == 200
    assert dep.procs[0].wait(timeout=15) == 0
    while r.fp.readline():  # the manager closed the stream: EOF, not a timeout
        pass
    stream.close()
    assert not os.path.exists(w.token_path)


def test_web_clients_do_not_hold_up_the_control_socket(web):
    import threading

    from onvm.control.client import Client

    dep, w = web
    streams = []
    for _ in range(MAX_STREAMS_PER_CLIENT):  # held open: a response let go closes its stream
        c = http.client.HTTPConnection(w.host, w.port, timeout=10)
        c.request("GET", "/api/stream")
        r = c.getresponse()
        assert r.status == 200
        streams.append((c, r))
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(40):
                w.json("/api/status")
                w.request("GET", "/metrics")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    answered = 0
    with Client(dep.name, timeout=5) as c:  # each request must come back within the timeout
        while any(t.is_alive() for t in threads):
            assert c.request("status")["nfs"][0]["state"] == "running"
            answered += 1
    for t in threads:
        t.join()
    for c, r in streams:
        r.close()
        c.close()
    assert not errors and answered > 0
    assert sum(sum(n["drops"].values()) for n in status(dep.name)["nfs"]) == 0


def test_bad_web_address(runtime):
    from tests.integration.conftest import onvm

    r = onvm("manager", "--name", "wbad", "--web", "127.0.0.1:notaport", "--duration", "1")
    assert r.returncode == 1 and "--web" in r.stderr


def test_web_port_in_use(runtime):
    import socket

    from tests.integration.conftest import onvm

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = onvm("manager", "--name", "wbusy", "--web", f"127.0.0.1:{port}", "--duration", "1")
    assert r.returncode == 1 and "in use" in r.stderr
    assert os.listdir(runtime) == []  # region, socket and token file are gone again


def test_rules_and_flows_through_the_api(web):
    dep, w = web
    auth = {"Authorization": f"Bearer {w.token}", "Content-Type": "application/json"}
    for op, body in (("chain_add", {"name": "web", "hops": "1,out:1"}),
                     ("rule_add", {"rule": "udp dst port 80 -> chain web"})):
        code, _, out = w.request("POST", f"/api/control/{op}", json.dumps(body).encode(), auth)
        assert code == 200, out
    rules = w.json("/api/rules")
    assert rules["total"] == 1 and rules["rules"][0]["rule"] == "udp dst port 80 -> chain web"
    flows = wait_for(lambda: w.json("/api/flows"), what="flows installed by the rule")
    assert {f["chain"] for f in flows} == {"web"} and all(f["origin"] == "rule" for f in flows)
    assert w.json("/api/flow_stats")["used"] == len(flows)
    assert [c["name"] for c in w.json("/api/chain_names")] == ["default", "web"]


def _stream_as(w: Web, uid: int) -> int:
    """The status a live stream request gets from another user on this machine."""
    code = ("import encodings.idna, http.client, os, sys\n"
            f"os.setgid({uid}); os.setuid({uid})\n"
            f"c = http.client.HTTPConnection({w.host!r}, {w.port}, timeout=10)\n"
            "c.request('GET', '/api/stream')\n"
            "print(c.getresponse().status)")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


def test_one_client_cannot_hold_every_stream_or_connection(web):
    import socket

    dep, w = web
    streams = []  # (connection, response): a response let go closes its stream
    try:
        for _ in range(MAX_STREAMS_PER_CLIENT):
            c = http.client.HTTPConnection(w.host, w.port, timeout=10)
            c.request("GET", "/api/stream")
            r = c.getresponse()
            assert r.status == 200
            streams.append((c, r))
        code, _, body = w.request("GET", "/api/stream")
        assert code == 503 and b"per client" in body
        if os.geteuid() == 0:  # another user still gets a stream of its own
            assert _stream_as(w, 65534) == 200
        # idle connections (a slow client): the client's cap, then 503 at once; others still served
        idle = [socket.create_connection((w.host, w.port), timeout=10)
                for _ in range(MAX_CONNECTIONS_PER_CLIENT - len(streams))]
        try:
            extra = socket.create_connection((w.host, w.port), timeout=10)
            reply = extra.recv(4096)
            extra.close()
            assert reply.startswith(b"HTTP/1.1 503") and b"per client" in reply, reply
        finally:
            for s in idle:
                s.close()
        wait_for(lambda: w.request("GET", "/api/status")[0] == 200, what="a place once the idle ones left")
        refused = status(dep.name)["refused"]["web"]
        assert refused["streams"] >= 1 and refused["connections"] >= 1
    finally:
        for c, r in streams:
            r.close()
            c.close()


def test_capture_trace_and_explain_from_the_web(web):
    """What the dashboard's buttons ask: a capture as a pcap download, a trace, an explanation."""
    from tests.integration.test_capture import records

    dep, w = web
    auth = {"Authorization": f"Bearer {w.token}", "Content-Type": "application/json"}
    body = json.dumps({"port": 0, "direction": "rx", "count": 10, "snaplen": 34, "seconds": 10}).encode()
    assert w.request("POST", "/api/capture", body=body)[0] == 401
    code, headers, pcap = w.request("POST", "/api/capture", body=body, headers=auth)
    assert code == 200 and headers["content-type"] == "application/vnd.tcpdump.pcap", pcap[:200]
    magic, frames = records(pcap)
    assert magic == 0xA1B23C4D and len(frames) == 10 and all(len(f) == 34 for f in frames)
    assert headers["x-onvm-captured"] == "10" and headers["x-onvm-dropped"] == "0"
    code, headers, pcap = w.request("POST", "/api/capture", headers=auth, body=json.dumps(
        {"port": 0, "filter": "tcp dst port 1", "seconds": 0.5}).encode())  # nothing matches: time ends it
    assert code == 200 and records(pcap)[1] == [] and headers["x-onvm-captured"] == "0"

    def control(op: str, args: dict[str, Any]) -> dict[str, Any]:
        code, _, out = w.request("POST", f"/api/control/{op}", body=json.dumps(args).encode(), headers=auth)
        assert code == 200, out
        return json.loads(out)

    assert control("trace_add", {"count": 2, "filter": "udp"})["count"] == 2
    shown = wait_for(lambda: (t := control("trace_show", {})) and len(t["packets"]) == 2 and t,
                     what="two traced packets")
    assert all(p["chain"] == "default" for p in shown["packets"])
    e = control("flow_explain", {"flow": "10.0.0.1:1024 10.1.0.1:80 udp"})
    assert e["chain"] == "default" and e["decided_by"] == "default chain" and e["hops"][0]["service"] == 1
    assert e["hops"][0]["nf"] == status(dep.name)["nfs"][0]["id"]
