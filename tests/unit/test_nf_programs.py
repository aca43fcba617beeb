"""NF programs: how ``onvm nf PROGRAM`` and a topology's ``program:`` find what to run."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from onvm import nfs
from onvm.errors import ConfigError
from onvm.nfs._new import write_skeleton
from onvm.testing import make_nf

NF_FILE = '''\
"""count_nf: a user NF in a file."""
SERVICE = 5


def add_arguments(p):
    p.add_argument("--tag", default="x")


def make(args):
    from onvm.nf import from_args

    nf = from_args("count_nf", args)
    nf.state = args.tag
    return nf
'''

SCRIPT = '''\
"""A plain script: it builds and runs its NF itself."""
from onvm import NF

NF("plain").run()
'''


def make_dist(root: Path, name: str = "usernfpkg", entry: str = "relay") -> Path:
    """A distribution on a sys.path entry, as pip would leave it: a package and its metadata."""
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_helper.py").write_text("SERVICE = 7\n")
    (pkg / "relay.py").write_text(textwrap.dedent('''\
        """relay: an NF an installed package publishes."""
        from ._helper import SERVICE  # a relative import: it runs as part of its package

        SUMMARY = "passes packets on, from an installed package"


        def make(args):
            from onvm.nf import from_args

            nf = from_args("relay", args)

            @nf.batch
            def handle(b):
                b.next()

            return nf
        '''))
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[onvm.nfs]\n{entry} = {name}.relay\n")
    return root


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = make_dist(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield root
    for mod in [m for m in sys.modules if m.startswith("usernfpkg")]:
        del sys.modules[mod]


def test_builtin_names_come_first() -> None:
    p = nfs.find("simple-forward")
    assert (p.kind, p.target) == ("builtin", "simple_forward")
    assert p.paths == []
    assert p.load().SERVICE == 2


def test_a_file_with_make_is_an_nf_module(tmp_path: Path) -> None:
    f = tmp_path / "count_nf.py"
    f.write_text(NF_FILE)
    p = nfs.find(str(f))
    assert p.kind == "file" and not p.is_script
    assert p.target == str(f) and p.paths == [str(tmp_path)]
    assert p.summary() == "count_nf: a user NF in a file."
    nf = make_nf(str(f), "--tag", "y", "--quiet")
    assert (nf.name, nf.service, nf.state) == ("count_nf", 5, "y")


def test_a_file_without_make_is_a_plain_script(tmp_path: Path) -> None:
    f = tmp_path / "plain.py"
    f.write_text(SCRIPT)
    p = nfs.find(str(f))
    assert p.is_script and p.summary() == "A plain script: it builds and runs its NF itself."
    with pytest.raises(ConfigError, match="plain script"):
        p.load()


def test_an_entry_point_is_found_and_runs_without_its_metadata(site: Path) -> None:
    (p,) = [p for p in nfs.installed() if p.name == "relay"]
    assert nfs.find("relay") == p
    assert (p.kind, p.target, p.origin) == ("entry-point", "usernfpkg.relay", "usernfpkg 1.0")
    # a new process gets the module to import and where it lives, not the entry point's name
    assert p.paths == [str(site)]
    assert p.summary() == "passes packets on, from an installed package"
    assert nfs.find(p.target).kind == "module"
    assert make_nf("relay", "--service", "3", "--quiet").service == 3


def test_a_module_by_name(site: Path) -> None:
    p = nfs.find("usernfpkg.relay")
    assert p.kind == "module" and p.paths == [str(site)]
    assert p.load().SERVICE == 7


@pytest.mark.parametrize("name, why", [
    ("teleporter", "no NF named 'teleporter'"),
    ("missing/nf.py", "no NF file 'missing/nf.py'"),
    ("json.decoder", "has no make"),
])
def test_what_is_no_nf_program_is_refused_by_name(name: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        nfs.find(name).load()


def test_a_file_that_fails_to_import_is_reported_with_its_error(tmp_path: Path) -> None:
    f = tmp_path / "broken.py"
    f.write_text("import no_such_module_here\n\ndef make(args):\n    pass\n")
    with pytest.raises(ConfigError, match="broken.py.*cannot be loaded: ModuleNotFoundError"):
        nfs.find(str(f)).load()
    (tmp_path / "syntax.py").write_text("def make(:\n")
    with pytest.raises(ConfigError, match="syntax.py"):
        nfs.find(str(tmp_path / "syntax.py"))


def test_new_writes_a_skeleton_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path, test = write_skeleton("my_nf", str(tmp_path))
    assert Path(path).read_text().startswith('"""my_nf: ')
    assert "import my_nf" in Path(test).read_text()
    assert nfs.find(path).kind == "file"
    with pytest.raises(ConfigError, match="exists already"):
        write_skeleton("my_nf", str(tmp_path))
    for bad in ("my-nf", "class", "1nf", "../x", ""):
        with pytest.raises(ConfigError, match="Python identifier"):
            write_skeleton(bad, str(tmp_path))
    with pytest.raises(ConfigError, match="not a directory"):
        write_skeleton("other", str(tmp_path / "nowhere"))
