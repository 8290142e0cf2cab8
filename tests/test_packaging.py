"""The packaging contract: an sdist and a wheel build, and the wheel works in a fresh virtualenv."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMPORTS = ["diarflow", "diarflow.dataflow", "diarflow.operators", "diarflow.servers", "diarflow.servers.jobs",
           "diarflow.provisioning", "diarflow.testing"]
STATIC = sorted(p.name for p in (REPO / "servers" / "static").iterdir() if p.is_file())

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # builds, then installs into a new venv


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build``: the sdist, then a wheel built from that sdist (as PyPI users get it)."""
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "absent from the `packages` configuration" not in proc.stdout + proc.stderr  # package data done right
    return out


def test_sdist_and_wheel_hold_every_package_and_the_page(dist: Path) -> None:
    (sdist,) = dist.glob("diarflow-*.tar.gz")
    (wheel,) = dist.glob("diarflow-*-py3-none-any.whl")
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    for module in IMPORTS:
        assert module.replace(".", "/") + "/__init__.py" in in_wheel, module
    for name in STATIC:
        assert f"diarflow/servers/static/{name}" in in_wheel, name
    assert "diarflow/py.typed" in in_wheel
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "LICENSE", "NOTICE", "servers/static/index.html"} <= in_sdist


def test_wheel_installs_into_a_clean_venv_and_runs(dist: Path, tmp_path: Path) -> None:
    """The wheel alone, installed with ``--no-deps`` (its dependencies come from this test's environment
    through a ``.pth`` file, so nothing is downloaded): imports, the ``diarflow`` command, the page."""
    (wheel,) = dist.glob("diarflow-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    # dependencies only: this environment's site-packages after the fresh one (the wheel's copy wins)
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    check = (
        "import importlib, importlib.resources, pathlib, sys\n"
        f"for name in {IMPORTS!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert pathlib.Path(module.__file__).is_relative_to({str(site)!r}), (name, module.__file__)\n"
        "static = importlib.resources.files('diarflow.servers') / 'static'\n"
        f"missing = [n for n in {STATIC!r} if not (static / n).is_file()]\n"
        "assert not missing, missing\n"
        "print('ok')\n"
    )
    imported = subprocess.run([str(python), "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert imported.returncode == 0 and imported.stdout.strip() == "ok", imported.stderr[-3000:]
    command = env_dir / "bin" / "diarflow"
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert helped.returncode == 0 and "diarize" in helped.stdout and "serve" in helped.stdout, helped.stderr
