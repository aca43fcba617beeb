"""Isolation backends: the commands they build and the errors for a missing runtime."""

from __future__ import annotations

import shutil

import pytest

from onvm.topology.isolation import (
    DockerIsolation,
    Launch,
    NamespaceIsolation,
    PodmanIsolation,
    ProcessIsolation,
    RuntimeMissing,
    backend,
)

LAUNCH = Launch(["/usr/bin/python3", "-S", "-m", "onvm.cli.main", "nf", "simple_forward"],
                {"ONVM_RUNTIME_DIR": "/dev/shm"}, ["/dev/shm/onvm-x.region", "/dev/shm/onvm-x.sock"],
                "onvm-x-fwd-0", "localhost/onvm-nf:latest", ["/opt/py"])


def _pairs(cmd, flag):
    return [(cmd[i + 1], cmd[i + 2]) for i, a in enumerate(cmd) if a == flag]


def test_process_runs_the_command_as_is():
    iso = ProcessIsolation()
    assert iso.command(LAUNCH) == LAUNCH.argv
    assert iso.env(LAUNCH)["ONVM_RUNTIME_DIR"] == "/dev/shm"


def test_namespace_unshares_everything_and_shares_only_region_and_socket():
    cmd = NamespaceIsolation().command(LAUNCH)
    assert cmd[0] == "bwrap"
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent",
                 "--new-session"):
        assert flag in cmd
    assert cmd[cmd.index("--cap-drop") + 1] == "ALL"
    assert cmd[cmd.index("--remount-ro") + 1] == "/"
    assert _pairs(cmd, "--bind") == [(f, f) for f in LAUNCH.shared]  # the only writable binds
    ro = dict(_pairs(cmd, "--ro-bind"))
    assert ro["/opt/py"] == "/opt/py" and "/usr" in ro
    assert not any(src in ("/", "/home", "/root", "/work", "/tmp") for src in ro)
    assert cmd[cmd.index("--") + 1:] == LAUNCH.argv
    assert ("ONVM_RUNTIME_DIR", "/dev/shm") in _pairs(cmd, "--setenv")


def test_podman_uses_runc_limits_no_network_and_no_privileges():
    cmd = PodmanIsolation().command(LAUNCH)
    assert cmd[:3] == ["podman", "--runtime", "runc"] and cmd[3] == "run"
    assert "--privileged" not in cmd
    assert cmd[cmd.index("--cap-drop") + 1] == "all"
    assert cmd[cmd.index("--security-opt") + 1] == "no-new-privileges"
    assert ["--ulimit", "nofile=4096:4096"] == cmd[cmd.index("nofile=4096:4096") - 1:][:2]
    assert "nproc=4096:4096" in cmd
    assert cmd[cmd.index("--network") + 1] == "none" and "--read-only" in cmd
    vols = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-v"]
    assert vols == [f"{f}:{f}" for f in LAUNCH.shared]
    assert cmd[cmd.index("--name") + 1] == "onvm-x-fwd-0"
    assert cmd[-len(LAUNCH.argv) - 1:] == [LAUNCH.image, *LAUNCH.argv]


def test_docker_has_the_same_interface():
    p, d = PodmanIsolation().command(LAUNCH), DockerIsolation().command(LAUNCH)
    assert d[0] == "docker" and d[1] == "run"
    assert d[1:] == p[3:]  # the same run arguments, without podman's --runtime runc


def test_unknown_isolation():
    with pytest.raises(Exception, match="unknown isolation 'vm'"):
        backend("vm")


@pytest.mark.parametrize("name,program,hint", [("namespace", "bwrap", "apt-get install bubblewrap"),
                                               ("podman", "podman", "apt-get install podman runc"),
                                               ("docker", "docker", "apt-get install docker.io")])
def test_missing_runtime_is_named_with_how_to_install_it(monkeypatch, name, program, hint):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeMissing) as ei:
        backend(name).check()
    assert f"isolation '{name}' needs {program}, which is not installed" in str(ei.value)
    assert hint in str(ei.value)


def test_podman_without_runc(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda p: None if p == "runc" else real(p) or f"/usr/bin/{p}")
    with pytest.raises(RuntimeMissing, match=r"runc, which is not installed \(install it with: apt-get"):
        PodmanIsolation().check()


def test_docker_client_without_an_engine(monkeypatch, tmp_path):
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/sh\n"
                    "echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeMissing) as ei:
        DockerIsolation().check()
    assert ("isolation 'docker' needs a running Docker engine: Cannot connect to the Docker daemon"
            in str(ei.value))
