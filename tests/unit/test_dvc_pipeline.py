"""dvc.yaml's logreg pipeline end to end with the real `dvc`, in a temporary copy of the project.

The copy holds what the stages name (dvc.yaml, params.yaml, .dvcignore, data/sst2 and core/, whose
files are code dependencies); the commands themselves run the installed `inferq`. Tracking is off:
tests/unit/test_tracking.py covers it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).parent / "dvc"
ARTEFACT = Path("var/dvc/models/sentiment-logreg")
METRICS = Path("var/dvc/metrics/sentiment-logreg.json")


def dvc(project: Path, *args: str) -> str:
    """`dvc ARGS` in `project`, which must succeed; its stdout and stderr together."""
    done = run_dvc(project, *args)
    return done.stdout + done.stderr


def run_dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "INFERQ_TRACKING": "false",
        "DVC_NO_ANALYTICS": "1",
        "COLUMNS": "250",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [str(DVC), *args], cwd=project, capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "data" / "sst2", root / "data" / "sst2")
    shutil.copytree(REPO / "core", root / "core", ignore=shutil.ignore_patterns("__pycache__"))
    dvc(root, "init", "--no-scm", "--quiet")
    dvc(root, "config", "core.analytics", "false")
    dvc(root, "config", "core.site_cache_dir", str(root / ".dvc-site"))
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> str:
    return dvc(project, "repro", "evaluate@logreg")


def test_repro_runs_prepare_train_and_evaluate_into_an_artefact_and_metrics(
    project: Path, first_run: str
) -> None:
    for stage in ("prepare", "train@logreg", "evaluate@logreg"):
        assert f"Running stage '{stage}'" in first_run
    assert "lstm" not in first_run and "transformer" not in first_run
    card = json.loads((project / ARTEFACT / "model_card.json").read_text())
    metrics = json.loads((project / METRICS).read_text())["logreg"]
    assert metrics["version"] == card["version"]
    assert metrics["accuracy"] >= 0.81
    assert metrics["n"] == 872
    manifest = json.loads((project / "var/dvc/prepared/sst2/manifest.json").read_text())
    assert manifest["splits"]["train"]["sha256"] == card["data"]["train"]["sha256"]
    shown = json.loads(run_dvc(project, "metrics", "show", "--json", str(METRICS)).stdout)
    assert shown[""]["data"][str(METRICS)]["data"]["logreg"]["accuracy"] == metrics["accuracy"]


def test_a_second_repro_finds_everything_up_to_date(project: Path, first_run: str) -> None:
    again = dvc(project, "repro", "evaluate@logreg")

    assert "Running stage" not in again
    assert "up to date" in again


def test_changing_a_logreg_param_reruns_train_only_from_there(
    project: Path, first_run: str
) -> None:
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["logreg"]["inverse_regularisation"] = 2.0
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))

    rerun = dvc(project, "repro", "train@logreg")

    assert "Running stage 'train@logreg'" in rerun
    assert "Running stage 'prepare'" not in rerun
    card = json.loads((project / ARTEFACT / "model_card.json").read_text())
    assert card["params"]["inverse_regularisation"] == 2.0
