"""The built wheel installs one top-level package, ``ppplan``, with its data, and plans from a fresh venv.

The wheel is built from a copy of the sources in ``tmp_path`` (setuptools writes ``build/`` and
``*.egg-info`` next to the sources) and installed without the network into a venv that sees this
interpreter's site-packages for torch and the other dependencies."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GENERIC_NAMES = ("api", "profiler", "partitioner", "executor", "migrations", "core")
SHIPPED_DATA = (
    "ppplan/partitioner/schema/plan-v1.schema.json",
    "ppplan/core/data/gpus.json",
    "ppplan/api/web/static/app.js",
    "ppplan/api/web/static/ppplan.css",
    "ppplan/profiler/presets/index.json",
    "ppplan/profiler/presets/llama-3.1-8b.json",
    "ppplan/profiler/presets/specs/llama-3.1-8b.json",
    "ppplan/profiler/data/profiles/llama-3.1-8b.bf16.H100-SXM-80GB.json",
    "ppplan/migrations/alembic.ini",
    "ppplan/migrations/script.py.mako",
)

pytest.importorskip("build", reason="the wheel is built with `build`, a dev dependency: pip install -e '.[dev]'")


def _run(args: list[str | Path], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def _build_wheel(tmp_path: Path, env: dict[str, str]) -> Path:
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "ppplan", src / "ppplan", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, src / name)
    dist = tmp_path / "dist"
    # --no-isolation: the machine's setuptools builds it (no network at test time)
    _run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", dist, src],
        cwd=tmp_path,
        env=env,
    )
    (wheel,) = dist.glob("ppplan-*.whl")
    return wheel


def test_wheel_installs_and_plans(tmp_path: Path) -> None:
    before = {n for n in ("build", "dist") if (ROOT / n).exists()}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into this interpreter's site-packages
        "PPPLAN_CACHE_DIR": str(tmp_path / "cache"),
        "PPPLAN_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}",
        "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
    }
    wheel = _build_wheel(tmp_path, env)

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    tops = {n.split("/")[0] for n in names}
    assert tops == {"ppplan", "ppplan-0.1.0.dist-info"}, sorted(tops)
    missing = [n for n in SHIPPED_DATA if n not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert any(n.startswith("ppplan/migrations/versions/") and n.endswith(".py") for n in names), "no Alembic versions"
    assert len([n for n in names if n.startswith("ppplan/profiler/data/profiles/")]) >= 6, "shipped profiles"

    # The venv's own pip would take seconds to bootstrap; this interpreter's pip, run by the venv's python
    # (it sees the system site-packages), installs into the venv.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], cwd=tmp_path, env=env)
    python, cli = venv / "bin" / "python", venv / "bin" / "ppplan"
    # --force-reinstall: the editable install of the checkout, visible through the system site-packages, has
    # the same version; pip leaves it alone (it is outside the venv) and installs the wheel into the venv.
    _run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", wheel],
        cwd=tmp_path,
        env=env,
    )

    where = _run([python, "-c", "import ppplan; print(ppplan.__file__)"], cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where
    for name in GENERIC_NAMES:
        res = subprocess.run([python, "-c", f"import {name}"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert res.returncode != 0 and "ModuleNotFoundError" in res.stderr, f"`import {name}` works: {res.stderr}"

    assert cli.exists()
    _run([cli, "plan", "llama-3.1-8b", "--gpus", "4xH100", "--no-save", "--json", "plan.json"], cwd=tmp_path, env=env)
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["schema_version"] == 1 and sum(plan["partition"]) == 32
    res = _run([cli, "validate", "plan.json"], cwd=tmp_path, env=env)
    assert "consistent" in res.stdout + res.stderr

    assert {n for n in ("build", "dist") if (ROOT / n).exists()} == before, "the build wrote into the checkout"
