"""The exception hierarchy and the runtime file locations."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from onvm.errors import (
    CODES,
    ConfigError,
    LifecycleError,
    ManagerNotRunning,
    OnvmError,
    ProtocolError,
    RegionError,
    error_from_code,
)
from onvm.paths import DEFAULT_RUNTIME_DIR, runtime_dir, socket_path, validate_name

SUBCLASSES = [
    (ProtocolError, "protocol"),
    (LifecycleError, "illegal_transition"),
    (RegionError, "region"),
    (ConfigError, "bad_request"),
    (ManagerNotRunning, "not_running"),
]


# -- errors ---------------------------------------------------------------------

def test_base_error_defaults_to_internal() -> None:
    err = OnvmError("it broke")
    assert err.code == "internal"
    assert err.message == "it broke"
    assert err.context == []
    assert str(err) == "it broke"


def test_explicit_code() -> None:
    assert OnvmError("x", code="busy").code == "busy"


@pytest.mark.parametrize(("cls", "code"), SUBCLASSES)
def test_subclass_codes(cls: type[OnvmError], code: str) -> None:
    err = cls("m")
    assert isinstance(err, OnvmError)
    assert err.code == code
    assert code in CODES


def test_context_renders_outermost_first() -> None:
    err = LifecycleError("can't stop NF 3 in state STARTING")
    assert err.add_context("NF 3") is err
    err.add_context("command stop")
    assert err.context == ["NF 3", "command stop"]
    assert str(err) == "command stop: NF 3: can't stop NF 3 in state STARTING"
    assert err.message == "can't stop NF 3 in state STARTING"


def test_repr() -> None:
    assert repr(ConfigError("bad")) == "ConfigError('bad', code='bad_request')"


@pytest.mark.parametrize("cls", [OnvmError, *(c for c, _ in SUBCLASSES)])
def test_pickle_keeps_type_code_and_context(cls: type[OnvmError]) -> None:
    err = cls("msg", code="custom").add_context("NF 1")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert (copy.code, copy.message, copy.context) == ("custom", "msg", ["NF 1"])


@pytest.mark.parametrize(("cls", "code"), SUBCLASSES)
def test_error_from_code_maps_to_subclass(cls: type[OnvmError], code: str) -> None:
    err = error_from_code(code, "text")
    assert type(err) is cls
    assert err.code == code
    assert str(err) == "text"


@pytest.mark.parametrize("code", ["no_such_nf", "busy", "internal", "brand_new"])
def test_error_from_code_keeps_other_codes(code: str) -> None:
    err = error_from_code(code, "text")
    assert type(err) is OnvmError
    assert err.code == code


# -- paths ----------------------------------------------------------------------

def test_runtime_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONVM_RUNTIME_DIR", raising=False)
    assert runtime_dir() == DEFAULT_RUNTIME_DIR == "/dev/shm"


def test_runtime_dir_empty_env_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONVM_RUNTIME_DIR", "")
    assert runtime_dir() == "/dev/shm"


def test_runtime_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ONVM_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == str(tmp_path)


def test_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONVM_RUNTIME_DIR", "/run/x")
    assert socket_path("lab-1") == "/run/x/onvm-lab-1.sock"
    monkeypatch.delenv("ONVM_RUNTIME_DIR")
    assert socket_path("onvm") == "/dev/shm/onvm-onvm.sock"


def test_socket_path_validates_name() -> None:
    with pytest.raises(ConfigError, match="invalid manager name '../x'"):
        socket_path("../x")


def test_socket_path_too_long(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONVM_RUNTIME_DIR", "/" + "d" * 90)
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        socket_path("a" * 20)


@pytest.mark.parametrize("name", [
    "onvm", "a", "A9", "_x", "lab-1.2_b", "0", "a" * 32, "a.", "a-",
])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", [
    "", ".", "..", ".hidden", "-x", "a" * 33, "a/b", "a b", "a\n", "\na",
    "na\u00efve", "a:b", "a\0b", "*",
])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_name(name)
    assert info.value.code == "bad_request"
    assert str(info.value).startswith(f"invalid manager name {name!r}: ")


def test_invalid_name_type() -> None:
    with pytest.raises(ConfigError, match="invalid manager name 3"):
        validate_name(3)  # type: ignore[arg-type]
