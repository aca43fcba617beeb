"""/metrics text, read back by the Prometheus client's own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from onvm import _hooks, latency
from onvm.web import metrics
from tests.unit.test_web_api import FakeSource


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_parse_and_carry_the_counters():
    sample = FakeSource().sample
    lat = _hooks.lat_record([1_000_000 - 5_000] * 90 + [0] * 10, 1_000_000)  # 90 x 5 us, 10 x 1 ms
    sample["status"]["nfs"][0]["latency"] = latency.summary(lat)
    sample["status"]["nfs"][0]["name"] = 'we"ird\\name'
    fams = families(metrics.render(sample))
    rx = {s.labels["nf"]: s.value for s in fams["onvm_nf_rx_packets"].samples}
    assert rx == {"1": 300.0, "2": 150.0}
    assert fams["onvm_nf_rx_packets"].type == "counter"
    names = {s.labels["name"] for s in fams["onvm_nf_rx_packets"].samples}
    assert 'we"ird\\name' in names
    assert {s.labels["reason"] for s in fams["onvm_nf_drops"].samples} == {"ring_full"}
    assert fams["onvm_port_tx_packets"].samples[1].value == 300.0
    svc = fams["onvm_service_instances"].samples
    assert [(s.labels["service"], s.value) for s in svc] == [("1", 2.0)]
    hist = fams["onvm_nf_latency_seconds"]
    assert hist.type == "histogram"
    buckets = [(float(s.labels["le"]), s.value) for s in hist.samples
               if s.name.endswith("_bucket") and s.labels["nf"] == "1"]
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == 100
    below_10us = max(v for le, v in buckets if le <= 10e-6)
    assert below_10us == 90
    count = [s.value for s in hist.samples if s.name.endswith("_count") and s.labels["nf"] == "1"]
    total = [s.value for s in hist.samples if s.name.endswith("_sum") and s.labels["nf"] == "1"]
    assert count == [100] and abs(total[0] - (90 * 5e-6 + 10 * 1e-3)) < 1e-9
    assert "onvm_port_latency_seconds" in fams
    assert fams["onvm_up"].samples[0].value == 1
    busy = {(s.labels["worker"], s.labels["role"]): s.value for s in fams["onvm_worker_busy_seconds"].samples}
    assert busy == {("0", "rx"): 300 * 30 / 1e9, ("1", "tx"): 300 * 30 / 1e9}
    assert [s.value for s in fams["onvm_worker_packets"].samples] == [300, 300]
    assert {s.labels["nf"]: s.value for s in fams["onvm_nf_busy_seconds"].samples} == {"1": 300 * 50 / 1e9,
                                                                                      "2": 150 * 50 / 1e9}


def test_metrics_carry_early_and_late_drops_per_nf_and_chain_hop():
    sample = FakeSource().sample
    st = sample["status"]
    st["nfs"][0].update(early=7, late=2, blocked=3, rx_congested=True)
    st["ports"][0]["drops"] = {"missed": 40, "early": 7}
    st["chains"] = [{"id": 0, "name": "default", "hops": "1,2,out:1",
                     "drops": [{"early": 0, "late": 0}, {"early": 7, "late": 2}, {"early": 0, "late": 0}]}]
    fams = families(metrics.render(sample))
    early = {s.labels["nf"]: s.value for s in fams["onvm_nf_early_drops"].samples}
    late = {s.labels["nf"]: s.value for s in fams["onvm_nf_late_drops"].samples}
    assert early == {"1": 7, "2": 0} and late == {"1": 2, "2": 0}
    assert [s.value for s in fams["onvm_nf_rx_congested"].samples] == [1, 0]
    hop = {(s.labels["chain"], s.labels["hop"]): s.value for s in fams["onvm_chain_hop_late_drops"].samples}
    assert hop == {("default", "0"): 0, ("default", "1"): 2, ("default", "2"): 0}
    assert fams["onvm_chain_hop_early_drops"].samples[1].value == 7
    port = {s.labels["reason"]: s.value for s in fams["onvm_port_drops"].samples if s.labels["port"] == "0"}
    assert port == {"missed": 40, "early": 7}
