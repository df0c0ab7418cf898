"""Choosing the transformer tiers' runtime, naming ONNX versions, and the export cache: all
without torch or onnxruntime, as the API process does them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config import get_settings
from core.inference.onnx_export import cached_export, onnx_version
from core.inference.onnx_transformer import (
    OnnxInt8SentimentTransformer,
    OnnxSentenceEmbedder,
    OnnxSentimentTransformer,
    choose_runtime,
)
from core.inference.registry import get_task
from core.inference.transformer import SentimentTransformer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("requested", "device", "precision", "gpu", "bf16", "installed", "expected"),
    [
        ("torch", "cpu", "auto", False, False, True, "torch"),
        ("onnx", "cpu", "auto", False, True, True, "onnx"),
        ("auto", "cpu", "auto", False, False, True, "onnx"),  # torch would run fp32
        ("auto", "auto", "fp32", False, True, True, "onnx"),  # fp32 asked for: onnx is faster
        ("auto", "cpu", "auto", False, True, True, "torch"),  # native bf16 batches faster
        ("auto", "cpu", "bf16", False, False, True, "torch"),  # only torch has half precision
        ("auto", "cuda", "auto", True, False, True, "torch"),
        ("auto", "auto", "auto", True, False, True, "torch"),  # auto device finds the GPU
        ("auto", "cpu", "fp32", False, False, False, "torch"),  # onnxruntime not installed
    ],
)
def test_auto_picks_onnx_only_on_cpu_where_torch_would_run_fp32(
    requested: str,
    device: str,
    precision: str,
    gpu: bool,
    bf16: bool,
    installed: bool,
    expected: str,
) -> None:
    chosen = choose_runtime(
        requested,
        device,
        precision,
        gpu_visible=gpu,
        cpu_native_bf16=bf16,
        onnx_installed=installed,
    )
    assert chosen == expected


def test_the_onnx_runtime_swaps_only_the_transformer_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_RUNTIME", "onnx")
    get_settings.cache_clear()
    sentiment = [tier.adapter for tier in get_task("sentiment").chain]
    embed = [tier.adapter for tier in get_task("embed").chain]

    assert sentiment == [
        "core.inference.onnx_transformer:OnnxSentimentTransformer",
        "core.inference.light:TfidfSentiment",
        "core.inference.rules:VaderSentiment",
    ]
    assert embed == ["core.inference.onnx_transformer:OnnxSentenceEmbedder"]


def test_the_torch_runtime_keeps_the_torch_tiers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_RUNTIME", "torch")
    get_settings.cache_clear()

    primary = get_task("sentiment").chain[0].adapter
    assert primary == "core.inference.transformer:SentimentTransformer"


def test_versions_name_the_runtime_and_the_quantisation() -> None:
    versions = {
        SentimentTransformer.current_version(),
        OnnxSentimentTransformer.current_version(),
        OnnxInt8SentimentTransformer.current_version(),
    }
    assert len(versions) == 3  # no two variants ever share cached results
    assert all(len(version) == 12 for version in versions)
    assert onnx_version("weights-a", "fp32") != onnx_version("weights-b", "fp32")


def test_the_onnx_tiers_refuse_cuda_and_half_precision() -> None:
    with pytest.raises(ValueError, match="CPU only"):
        OnnxSentimentTransformer.load(device="cuda")
    with pytest.raises(ValueError, match="fp32"):
        OnnxSentenceEmbedder.load(device="cpu", precision="bf16")


def test_the_api_never_imports_onnxruntime_or_torch_on_the_onnx_runtime() -> None:
    code = (
        "import sys; import api.app; from core.inference.registry import tier_version; "
        "api.app.create_app(); v = tier_version('sentiment', 'primary'); "
        "leaked = {'torch', 'onnxruntime', 'onnx'} & set(sys.modules); assert not leaked, leaked; "
        "print(v)"
    )
    env = {**os.environ, "INFERQ_RUNTIME": "onnx"}
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.stdout.splitlines()[-1] == OnnxSentimentTransformer.current_version()


EXPORT_RACE = """
import os, sys, time
from pathlib import Path
from core.inference.onnx_export import cached_export
target, log, go = map(Path, sys.argv[1:])
def write(to):
    with log.open("a") as handle:
        handle.write(f"{os.getpid()}\\n")
    time.sleep(0.5)  # long enough for the other process to find the export under way
    to.write_bytes(b"graph" * 1000)
while not go.exists():
    time.sleep(0.01)
assert cached_export(target, write) == target
assert target.read_bytes() == b"graph" * 1000
"""


def test_two_processes_exporting_at_once_export_once(tmp_path: Path) -> None:
    target, log, go = tmp_path / "cache" / "model.onnx", tmp_path / "writers", tmp_path / "go"
    racers = [
        subprocess.Popen([sys.executable, "-c", EXPORT_RACE, target, log, go], cwd=ROOT)
        for _ in range(2)
    ]
    time.sleep(1.0)  # both imported and waiting
    go.touch()

    assert [racer.wait(timeout=60) for racer in racers] == [0, 0]
    assert len(log.read_text().splitlines()) == 1
    assert sorted(path.name for path in target.parent.iterdir()) == [
        "model.onnx",
        "model.onnx.lock",
    ]


def test_a_failed_export_leaves_nothing_behind_and_the_next_load_exports(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"

    def half_then_fail(to: Path) -> None:
        to.write_bytes(b"half a graph")
        raise RuntimeError("exporter crashed")

    with pytest.raises(RuntimeError, match="exporter crashed"):
        cached_export(target, half_then_fail)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.onnx.lock"]

    cached_export(target, lambda to: to.write_bytes(b"graph"))
    assert target.read_bytes() == b"graph"


def test_what_a_killed_export_left_is_removed_by_the_next(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    leftover = tmp_path / ".model.onnx.4242.deadbeef.tmp"
    leftover.write_bytes(b"half a graph from a process killed mid-export")

    cached_export(target, lambda to: to.write_bytes(b"graph"))
    assert not leftover.exists()
    assert target.read_bytes() == b"graph"
