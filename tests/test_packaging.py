"""The wheel, installed in a fresh virtualenv outside the repository, runs validate, plan, init and compile."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no repository on its path); its dependencies come from this
    environment's site-packages through a .pth file, so nothing is downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(root / "dist")], check=True, capture_output=True, cwd=root)
    wheel = next((root / "dist").glob("flanpipe-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "flanpipe/bundled/templates/taxonomy.yaml" in names and "flanpipe/bundled/pipelines/flan2021.yaml" in names
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (Path(target) / "zz_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    return env_dir


def _run(env_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(env_dir / "bin" / "flanpipe"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_installed_package_is_the_wheel_with_its_own_collection(installed, tmp_path):
    python = installed / "bin" / "python"
    out = subprocess.run([python, "-c", "import flanpipe, flanpipe.paths as p; print(flanpipe.__file__); "
                          "print(p.TEMPLATES_DIR); print(p.PIPELINES_DIR)"], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.split()
    assert all(str(installed) in line for line in out), out  # not the repository's
    assert out[1].endswith("flanpipe/bundled/templates")


def test_validate_plan_init_and_compile_from_an_empty_directory(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(installed, empty, "validate")
    assert result.returncode == 0, result.stderr
    # the packaged collection (dataset files + taxonomy) and the pipelines, as many as the checkout has
    expected = len(list((REPO / "templates").glob("*/*.yaml"))) + 1 + len(list((REPO / "pipelines").glob("*.yaml")))
    assert f"{expected} file(s) valid" in result.stdout
    result = _run(installed, empty, "plan", "flanpipe:pipelines/flan2021.yaml")
    assert result.returncode == 0 and "flan2021: 10 split(s)" in result.stdout, result.stderr
    result = _run(installed, empty, "init", "proj")
    assert result.returncode == 0, result.stderr
    project = empty / "proj"
    result = _run(installed, project, "validate", "templates", "pipeline.yaml")
    assert result.returncode == 0, result.stderr
    result = _run(installed, project, "compile", "pipeline.yaml", "--templates", "templates", "--out", "out",
                  "--cache-dir", str(tmp_path / "cache"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["my_instructions"]["examples"] == 2000
    result = _run(installed, project, "verify", "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in empty.iterdir()) == ["proj"]  # nothing written beside it
