"""The transformer space through `dna-deploy run`: teacher, tables, DNA, rating, search, retrain,
the random baseline, LiteRT fp32 export on the stock interpreter, verify, report."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.space import load_space

runner = CliRunner()
pytestmark = pytest.mark.slow


def test_vit_tiny_pipeline_end_to_end(tmp_path):
    # find_spec, not an import: TensorFlow loaded before torch's compiler stack crashes a later triton import
    if importlib.util.find_spec("onnx2tf") is None:
        pytest.skip("LiteRT export needs onnx2tf: pip install 'dna-deploy[tflite]'")
    smoke = Path(__file__).with_name("smoke_vit.yaml")
    r = runner.invoke(app, ["run", str(smoke), "--out", str(tmp_path), "-f", "json"])
    assert r.exit_code == 0, r.output[-3000:]
    space = load_space("vit-tiny")
    search = json.loads((tmp_path / "search.json").read_text())
    best = search["results"][0]
    assert best["latency_ms:x86-cpu-onnxruntime"] <= search["budgets_ms"]["x86-cpu-onnxruntime"] + 1e-9
    space.parse_arch(best["arch"])
    ratings = json.loads((tmp_path / "ratings.json").read_text())
    assert sum(len(b["candidates"]) for b in ratings["blocks"]) == 270
    verify = json.loads((tmp_path / "export/tflite/verify.json").read_text())
    assert verify["passed"]
    tflite = [a for a in verify["artifacts"] if a["runtime"] == "litert"]
    assert tflite and tflite[0]["stats"]["top1_agreement"] >= 0.99
    baseline = json.loads((tmp_path / "baseline/baseline.json").read_text())
    assert len(baseline["peers"]) == 1 and baseline["found_arch"] == best["arch"]
    target = baseline["found_predicted_ms"]
    for p in baseline["peers"]:
        assert p["arch"] != best["arch"] and abs(p["predicted_ms"] - target) <= 0.1 * target + 1e-9
        assert torch.load(tmp_path / "baseline" / f"random{baseline['peers'].index(p)}" / "model.pt",
                          weights_only=True)["arch"] == p["arch"]
    report = (tmp_path / "report.md").read_text()
    assert "Against random networks of the same latency" in report and "median" in report
    script = (tmp_path / "reproduce.sh").read_text()
    assert script.count("dna-deploy retrain") == 2  # the found network and the random one
