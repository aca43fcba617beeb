"""Names and URIs of any text: shown whole-charactered in status, and the manager stops cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.integration.conftest import onvm, wait_for

NAME = "фильтр-" * 8  # 56 characters, 104 bytes of UTF-8


def test_non_ascii_nf_name_and_port_uri_show_whole_characters_and_stop_cleanly(deploy, tmp_path):
    out = tmp_path / ("выход-" * 12 + ".pcap")
    dep = deploy(["--port", "gen:size=64,flows=4,rate=2k", "--port", f"pcap-out:{out}",
                  "--default-chain", "1,out:1"])
    script = tmp_path / "named.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        from onvm import NF
        nf = NF({NAME!r}, service=1, manager=sys.argv[1], quiet=True)
        @nf.packet
        def handle(pkt, meta):
            meta.next()
        nf.run()
    '''))
    nf = subprocess.Popen([sys.executable, str(script), dep.name])
    dep.procs.append(nf)
    dep.wait_running(1)
    r = onvm("status", "--name", dep.name, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    name = st["nfs"][0]["name"]
    assert name == "фильтр-фильтр-фи"  # 30 bytes: the next character would not fit whole in 31
    assert next(p["uri"] for p in st["ports"] if p["kind"] == "pcap-out") == f"pcap-out:{out}"
    text = onvm("status", "--name", dep.name)
    assert text.returncode == 0 and name in text.stdout, text.stderr
    wait_for(lambda: dep.status()["nfs"][0]["rx"] > 0, what="packets through the NF")
    r = onvm("stop", "--name", dep.name)
    assert r.returncode == 0, r.stderr
    assert nf.wait(timeout=10) == 0
    manager = dep.procs[0]
    assert manager.wait(timeout=10) == 0
    assert out.stat().st_size > 24  # the pcap was written and closed under its own name
