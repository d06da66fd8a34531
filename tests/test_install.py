"""A regular (non-editable) install runs: the wheel carries the Hydra configs, found through the package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model=tiny", "logger=none", "data.max_train_samples=48", "data.max_eval_samples=24",
        "trainer.max_epochs=1", "data.batch_size=16"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project's wheel, built here and installed (without its dependencies: this environment has them)
    into a folder outside the repository."""
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    tmp = tmp_path_factory.mktemp("install")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            str(ROOT), "-w", str(tmp / "wheels")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "wheels").glob("dyntok-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dyntok/conf/config.yaml" in names and "dyntok/conf/method/lengthdrop.yaml" in names
    target = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return target


def _env(target: Path) -> dict[str, str]:
    # the installed copy first on the path, ahead of the editable one of this checkout
    return {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}


def test_the_installed_package_runs_from_a_folder_outside_the_repository(installed, tmp_path):
    env, cwd = _env(installed), tmp_path / "elsewhere"
    cwd.mkdir()
    where = subprocess.run([sys.executable, "-c", "import dyntok; print(dyntok.__file__)"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout
    run = subprocess.run([sys.executable, "-m", "dyntok.run", *TINY, "trainer.max_steps=3"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    results = list((cwd / "outputs").rglob("results.json"))
    assert len(results) == 1
    rec = json.loads(results[0].read_text())
    assert rec["status"] == "ok" and rec["train_steps"] == 3
    assert rec["versions"]["git_commit"] is None  # no checkout around an installed package
    # the console script
    script = subprocess.run([str(installed / "bin" / "dyntok"), *TINY, "trainer.max_steps=2",
                             f"hydra.run.dir={cwd / 'script'}"], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert script.returncode == 0, script.stderr[-3000:]
    assert json.loads((cwd / "script" / "results.json").read_text())["train_steps"] == 2


def test_a_users_own_config_folder_adds_options(installed, tmp_path):
    own = tmp_path / "myconf" / "model"
    own.mkdir(parents=True)
    tiny = (ROOT / "dyntok" / "conf" / "model" / "tiny.yaml").read_text()
    (own / "mytiny.yaml").write_text(tiny.replace("name: tiny", "name: mytiny").replace("hidden_size: 32",
                                                                                        "hidden_size: 16"))
    run = subprocess.run([sys.executable, "-m", "dyntok.run", "--config-dir", str(tmp_path / "myconf"),
                          *TINY, "model=mytiny", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=tmp_path, env=_env(installed), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rec = json.loads((tmp_path / "run" / "results.json").read_text())
    assert rec["model"] == "mytiny" and rec["config"]["model"]["config"]["hidden_size"] == 16
