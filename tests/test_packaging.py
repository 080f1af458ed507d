"""What ``pip install rys`` puts into site-packages: one name, ``rys``, and working commands.

The wheel is built from a copy of the checkout (what a clean clone holds: tracked files plus new ones
git does not ignore), so the build writes nothing into the repository, and installed into fresh
venvs. A fresh venv only sees the test interpreter's packages (numpy, optuna, ...) through a ``.pth``
line added after the install, so pip never sees, let alone uninstalls, anything outside it, and the
editable install of the outer venv stays out of reach (a path line in a ``.pth`` does not run the
``.pth`` files it points at, where the editable finder is hooked in).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from repo_text import ROOT, console_scripts

#: PyPI names rys's modules used to collide with when they were installed as top-level modules
STAND_INS = {"sweep": "sweep.py", "probes": "probes/__init__.py", "visualize": "visualize.py"}


def _env() -> dict[str, str]:
    """The environment without anything that would add the repository or another venv to a
    child interpreter's path."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(cmd: list[str | Path], cwd: Path, timeout: float = 120) -> str:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _checkout_copy(dest: Path) -> Path:
    """Copy what a clean clone would hold (tracked and new, not ignored files) into ``dest``."""
    listed = _run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                  cwd=ROOT)
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the work tree is not part of the build
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def rys_wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built with the test interpreter's setuptools (no download)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _checkout_copy(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", tmp / "dist", src], cwd=tmp, timeout=300)
    (wheel,) = (tmp / "dist").glob("rys-*.whl")
    return wheel


def _fresh_venv(path: Path) -> tuple[Path, Path]:
    """A new venv without pip (the test interpreter's pip installs into it): its python and its
    site-packages."""
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=path.parent).strip())
    return python, site


def _pip_install(python: Path, *wheels: Path) -> None:
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", *wheels], cwd=python.parent)


def _see_test_dependencies(site: Path) -> None:
    """Let the fresh venv import rys's dependencies from the test interpreter's site-packages
    (after its own, so the installed wheel wins)."""
    dirs = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "zz_test_dependencies.pth").write_text("".join(f"{d}\n" for d in dirs))


def _python_json(python: Path, code: str, cwd: Path) -> dict:
    """Run ``code`` (which prints one JSON object) in the fresh venv, away from the repository
    (whose sweep.py would otherwise be importable as ``sweep`` from the working directory)."""
    return json.loads(_run([python, "-c", textwrap.dedent(code)], cwd=cwd))


def _stand_in_wheel(dest: Path, name: str, module_file: str) -> Path:
    """A minimal wheel of a PyPI package ``name`` whose module says who it is (``WHO``)."""
    dist = f"{name}-1.0.dist-info"
    files = {
        module_file: f"WHO = 'the stand-in {name}'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: rys-tests\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for rel, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{rel},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = dest / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for rel, text in files.items():
            zf.writestr(rel, text)
    return wheel


def test_the_wheel_installs_one_name_and_every_command_runs(rys_wheel, tmp_path):
    python, site = _fresh_venv(tmp_path / "venv")
    before = set(os.listdir(site))
    _pip_install(python, rys_wheel)
    version = rys_wheel.name.split("-")[1]
    assert set(os.listdir(site)) - before == {"rys", f"rys-{version}.dist-info"}

    _see_test_dependencies(site)
    where = _python_json(python, """
        import json, rys, rys.sweep, rys.probes
        print(json.dumps({"rys": rys.__file__, "sweep": rys.sweep.__file__,
                          "probes": rys.probes.__file__}))""", cwd=tmp_path)
    for module, file in where.items():
        assert Path(file).is_relative_to(site / "rys"), (module, file)

    scripts = console_scripts()
    assert {"rys-sweep", "rys-path", "rys-surgery", "rys-eval", "rys-plot", "rys-probes"} <= set(scripts)
    for name in scripts:
        out = _run([tmp_path / "venv" / "bin" / name, "--version"], cwd=tmp_path)
        assert out.startswith(f"rys {version}"), (name, out)


def test_rys_installs_beside_packages_named_like_its_modules(rys_wheel, tmp_path):
    """PyPI has ``sweep``, ``probes`` and ``visualize``: with rys beside them, all four import, and
    each name gives its own package."""
    python, site = _fresh_venv(tmp_path / "venv")
    stand_ins = [_stand_in_wheel(tmp_path, name, file) for name, file in STAND_INS.items()]
    _pip_install(python, *stand_ins)
    _pip_install(python, rys_wheel)

    _see_test_dependencies(site)
    got = _python_json(python, """
        import json, sweep, probes, visualize
        from rys import sweep as rys_sweep, probes as rys_probes, visualize as rys_visualize
        print(json.dumps({
            "stand-ins": [sweep.WHO, probes.WHO, visualize.WHO],
            "rys": [m.__file__ for m in (rys_sweep, rys_probes, rys_visualize)],
            "rys commands": [callable(m.main) for m in (rys_sweep, rys_visualize)]}))""",
                       cwd=tmp_path)
    assert got["stand-ins"] == [f"the stand-in {name}" for name in STAND_INS]
    assert all(Path(f).is_relative_to(site / "rys") for f in got["rys"]), got["rys"]
    assert got["rys commands"] == [True, True]
