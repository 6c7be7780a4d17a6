"""What users install, installed the way users install it (issue 7).

Built ONCE per module, offline (no build isolation, no index): the sdist from this tree, a
compiled wheel from that sdist with Cython made unimportable (the shipped C must be enough),
and a pure wheel from the same sdist with NOPORTS_NO_EXTENSIONS=1. Each wheel goes into a
fresh venv (its dependencies come from the running environment through a path entry, not a
download). Every installed program then runs from a directory holding a decoy ``noports/``
package that exits on import: anything that imports from the current directory fails there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from noports import _compat

ROOT = Path(__file__).resolve().parent.parent
DECOY = 'raise SystemExit("DECOY: imported noports from the current directory")\n'

pytestmark = pytest.mark.skipif(
    not (ROOT / "setup.py").exists(), reason="needs the source tree (setup.py)"
)


def _need_build_tools() -> None:
    try:
        import Cython  # noqa: F401
        import setuptools
        import wheel  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"build tools missing ({exc.name}); pip install -e '.[test]'")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("setuptools >= 77 needed (pip install -e '.[test]')")


def _run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    e = {k: v for k, v in os.environ.items() if not k.startswith("NOPORTS_")}
    e.pop("PYTHONPATH", None)
    e.update(env or {})
    return subprocess.run(argv, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def _ok(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert p.returncode == 0, f"{p.args}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    return p


class Venv:
    """A fresh venv with one wheel installed; dependencies seen through a path entry."""

    def __init__(self, path: Path, wheel: Path) -> None:
        self.path = path
        _ok(_run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=path.parent))
        self.python = path / "bin" / "python"
        code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        purelib = _ok(_run([str(self.python), "-c", code], cwd=path)).stdout.strip()
        self.site = Path(purelib)
        deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        (self.site / "_noports_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
        _ok(
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "--python",
                    str(self.python),
                    "install",
                    "-q",
                    "--no-deps",
                    "--no-index",
                    str(wheel),
                ],
                cwd=path.parent,
            )
        )

    def prog(self, name: str) -> str:
        return str(self.path / "bin" / name)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    _need_build_tools()
    out = tmp_path_factory.mktemp("dist")
    sdist_name = (
        _ok(
            _run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from setuptools import build_meta as b; "
                    "print(b.build_sdist(sys.argv[1]))",
                    str(out),
                ],
                cwd=ROOT,
            )
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    sdist = out / sdist_name
    # Cython cannot be imported while the sdist builds: the shipped C is compiled as is.
    block = tmp_path_factory.mktemp("block")
    (block / "Cython").mkdir()
    (block / "Cython" / "__init__.py").write_text('raise ImportError("Cython blocked")\n')
    pip_wheel = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
    ]
    cdir, pdir = out / "compiled", out / "pure"
    _ok(_run([*pip_wheel, str(cdir), str(sdist)], cwd=out, env={"PYTHONPATH": str(block)}))
    _ok(
        _run(
            [*pip_wheel, str(pdir), str(sdist)],
            cwd=out,
            env={"PYTHONPATH": str(block), "NOPORTS_NO_EXTENSIONS": "1"},
        )
    )
    (compiled,) = cdir.glob("noports-*.whl")
    (pure,) = pdir.glob("noports-*.whl")
    decoy = tmp_path_factory.mktemp("clone")
    (decoy / "noports").mkdir()
    (decoy / "noports" / "__init__.py").write_text(DECOY)
    return {"sdist": sdist, "compiled": compiled, "pure": pure, "decoy": decoy, "out": out}


@pytest.fixture(scope="module")
def compiled_venv(built: dict[str, Path]) -> Venv:
    return Venv(built["out"] / "venv-compiled", built["compiled"])


@pytest.fixture(scope="module")
def pure_venv(built: dict[str, Path]) -> Venv:
    return Venv(built["out"] / "venv-pure", built["pure"])


def test_decoy_catches_imports_from_the_current_directory(built: dict[str, Path]) -> None:
    # The control: plain ``python -m`` does import the decoy, so the tests below can fail.
    p = _run([sys.executable, "-m", "noports.cli.noports", "--version"], cwd=built["decoy"])
    assert p.returncode != 0 and "DECOY" in p.stderr


@pytest.mark.parametrize("variant", ["default", "bootstrap"])
def test_python_module_argv_ignores_the_current_directory(
    built: dict[str, Path], variant: str
) -> None:
    argv = _compat.python_module_argv("noports.cli.noports", "--version")
    if variant == "bootstrap":  # what Python 3.10 runs
        argv = [sys.executable, "-c", _compat._BOOTSTRAP, "noports.cli.noports", "--version"]
    p = _ok(_run(argv, cwd=built["decoy"]))
    assert p.stdout.startswith("noports (noports)"), p.stdout


def test_sdist_ships_cython_sources_and_generated_c(built: dict[str, Path]) -> None:
    with tarfile.open(built["sdist"]) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for pyx in (ROOT / "_speedups").glob("*.pyx"):
        assert f"_speedups/{pyx.name}" in names
        assert f"_speedups/{pyx.stem}.c" in names
    assert {"LICENSE", "setup.py", "MANIFEST.in", "tests/conftest.py"} <= names
    assert {"packaging/man/srvd.1", "packaging/systemd/noports-sshnpd@.service"} <= names
    assert not [n for n in names if n.endswith((".so", ".pyc")) or n == "noports/_build.py"]


def test_wheels_record_what_they_are(built: dict[str, Path]) -> None:
    assert "-cp3" in built["compiled"].name and built["pure"].name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(built["compiled"]) as z:
        assert "IMPLEMENTATION = 'compiled'" in z.read("noports/_build.py").decode()
        assert [n for n in z.namelist() if n.startswith("noports/_speedups/pump_c.")]
    with zipfile.ZipFile(built["pure"]) as z:
        assert "IMPLEMENTATION = 'pure'" in z.read("noports/_build.py").decode()
        assert not [n for n in z.namelist() if n.endswith(".so")]


def test_compiled_install_from_sdist_runs_demo(built: dict[str, Path], compiled_venv: Venv) -> None:
    v = _ok(_run([compiled_venv.prog("noports"), "--version"], cwd=built["decoy"]))
    assert "implementation compiled;" in v.stdout, v.stdout
    p = _ok(
        _run(
            [compiled_venv.prog("noports"), "demo", "--size", "4M", "--pings", "20"],
            cwd=built["decoy"],
            timeout=120,
        )
    )
    assert "sha256 OK" in p.stdout and "compiled" in p.stdout
    man = compiled_venv.path / "share" / "man" / "man1"
    assert {f"{n}.1" for n in ("noports", "srvd", "sshnpd", "npt")} <= {
        m.name for m in man.iterdir()
    }


def test_quickstart_from_a_directory_with_a_noports_tree(
    built: dict[str, Path], compiled_venv: Venv
) -> None:
    # The README's first command, typed where a user stands after git clone: the relay's
    # worker processes and every program quickstart starts must import the installed package.
    p = _run(
        [compiled_venv.prog("noports"), "quickstart", "--exit"], cwd=built["decoy"], timeout=180
    )
    assert p.returncode == 0, f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}"
    assert "all checks passed" in p.stdout and "DECOY" not in p.stdout + p.stderr


def test_pure_wheel_is_pure_without_any_variable(built: dict[str, Path], pure_venv: Venv) -> None:
    v = _ok(_run([pure_venv.prog("srvd"), "--version"], cwd=built["decoy"]))
    assert "implementation pure;" in v.stdout, v.stdout
    p = _ok(
        _run(
            [pure_venv.prog("noports"), "demo", "--size", "4M", "--pings", "20"],
            cwd=built["decoy"],
            timeout=120,
        )
    )
    assert "sha256 OK" in p.stdout and "pure Python" in p.stdout


def test_compiled_install_without_its_extensions_fails_in_one_line(
    built: dict[str, Path], tmp_path: Path
) -> None:
    v = Venv(tmp_path / "venv-broken", built["compiled"])
    for so in (v.site / "noports" / "_speedups").glob("*_c.*"):
        so.unlink()
    for prog in ("noports", "srvd"):
        p = _run([v.prog(prog), "--version"], cwd=built["decoy"])
        assert p.returncode == 1, p
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "speedups are missing" in lines[0], p.stderr
        assert lines[0].startswith(f"{prog}: error:")


def test_require_extensions_refuses_a_pure_build() -> None:
    p = _run(
        [sys.executable, "setup.py", "--name"],
        cwd=ROOT,
        env={"NOPORTS_NO_EXTENSIONS": "1", "NOPORTS_REQUIRE_EXTENSIONS": "1"},
    )
    assert p.returncode != 0 and "NOPORTS_REQUIRE_EXTENSIONS" in p.stderr, p


def test_installed_service_command_finds_its_unit_templates(
    built: dict[str, Path], compiled_venv: Venv, tmp_path: Path
) -> None:
    p = _ok(
        _run(
            [compiled_venv.prog("noports"), "service", "install", "srvd", "--root", str(tmp_path)],
            cwd=built["decoy"],
        )
    )
    unit = (tmp_path / "etc/systemd/system/noports-srvd.service").read_text()
    assert f"ExecStart={compiled_venv.path}/bin/srvd " in unit, p.stdout
