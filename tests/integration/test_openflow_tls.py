"""OpenFlow over TLS: the manager talks only to a controller whose certificate its CA signed."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("os_ken")
x509 = pytest.importorskip("cryptography.x509")

from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from onvm.errors import ConfigError  # noqa: E402
from onvm.manager.config import ManagerConfig  # noqa: E402
from tests.integration.conftest import status, wait_for  # noqa: E402
from tests.integration.test_sdn_osken import APP, Controller, free_port  # noqa: E402


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))


def _pki(d: Path, prefix: str) -> dict[str, Path]:
    """A CA, and a controller's and a switch's key and certificate signed by it (PEM files)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    out = {"ca": d / f"{prefix}-ca.pem"}
    out["ca"].write_bytes(_cert(f"{prefix} CA", ca_key, f"{prefix} CA", ca_key, True)
                          .public_bytes(serialization.Encoding.PEM))
    for who in ("ctl", "sw"):
        key = ec.generate_private_key(ec.SECP256R1())
        out[f"{who}-key"] = d / f"{prefix}-{who}-key.pem"
        out[f"{who}-key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        out[f"{who}-cert"] = d / f"{prefix}-{who}-cert.pem"
        out[f"{who}-cert"].write_bytes(_cert(f"{prefix} {who}", key, f"{prefix} CA", ca_key, False)
                                       .public_bytes(serialization.Encoding.PEM))
    for p in out.values():
        p.chmod(0o600)
    return out


def _session(name: str) -> dict:
    """The manager's one OpenFlow session, as its status shows it ({} until the agent runs)."""
    return (status(name).get("openflow") or {"controllers": [{}]})["controllers"][0]


class TlsController(Controller):
    """The os-ken controller listening with TLS only, with the given PKI's controller certificate."""

    def __init__(self, port: int, log: Path, pki: dict[str, Path]) -> None:
        super().__init__(port, log)
        self.pki = pki

    def start(self) -> None:
        import os

        env = dict(os.environ, **self.env, STEER_LOG=str(self.log))
        self.proc = subprocess.Popen([sys.executable, "-m", "onvm.sdn.controller", "--listen",
                                      f"127.0.0.1:{self.port}", "--private-key", str(self.pki["ctl-key"]),
                                      "--certificate", str(self.pki["ctl-cert"]), "--ca-cert",
                                      str(self.pki["ca"]), str(APP)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_manager_takes_flows_only_from_a_controller_its_ca_signed(deploy, tmp_path):
    good, rogue = _pki(tmp_path, "good"), _pki(tmp_path, "rogue")
    port = free_port()
    # Someone else listens at the controller's address while the real one is away: its
    # certificate is signed by another CA (and it trusts the switch it is shown anyway).
    impostor = TlsController(port, tmp_path / "impostor.log", {**rogue, "ca": good["ca"]})
    impostor.start()
    try:
        # the ports the steering app expects (see test_sdn_osken): web traffic, other traffic, out
        dep = deploy(["--port", "gen:proto=tcp,dport=80,flows=8,rate=1000", "--port",
                      "gen:proto=udp,dport=53,flows=4,rate=500", "--port", "null",
                      "--default-chain", "1,out:2", "--controller", f"ssl:127.0.0.1:{port}",
                      "--private-key", str(good["sw-key"]), "--certificate", str(good["sw-cert"]),
                      "--ca-cert", str(good["ca"])])
        wait_for(lambda: _session(dep.name).get("tls_failures", 0) >= 2, timeout=30,
                 what="the manager to refuse the impostor")
        st = status(dep.name)["openflow"]
        assert not st["controllers"][0]["connected"]
        assert st["controllers"][0]["target"] == f"ssl:127.0.0.1:{port}"
        assert not impostor.events("connected") and not impostor.events("installed")
    finally:
        impostor.kill()
    real = TlsController(port, tmp_path / "real.log", good)
    real.start()
    try:
        wait_for(lambda: real.events("installed"), timeout=60, what="the real controller's flows over TLS")
        wait_for(lambda: _session(dep.name).get("connected"), timeout=10, what="the session")
        wait_for(lambda: status(dep.name)["openflow"]["flows"] == 2, timeout=10, what="its two flows")
    finally:
        real.kill()
        assert real.proc is not None and real.proc.returncode == -signal.SIGKILL


def test_ssl_controller_without_its_files_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="needs --private-key, --certificate and --ca-cert"):
        ManagerConfig(controllers=["ssl:127.0.0.1:6653"])
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=f"--certificate {missing}"):
        ManagerConfig(controllers=["ssl:127.0.0.1:6653"], private_key=str(missing), certificate=str(missing),
                      ca_cert=str(missing))
