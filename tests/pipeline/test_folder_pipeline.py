"""Folder data through `dna-deploy run`: an ImageFolder tree (PNG, JPEG, grayscale, RGBA) goes
through every stage, streamed by loader workers, with capped rating and validation, mid-epoch
checkpoints, and the reproduce commands carrying the compute settings."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dna_deploy.cli.app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagefolder import make_image_folder  # noqa: E402

runner = CliRunner()
SPACE = Path(__file__).resolve().parents[1] / "data" / "mbconv64.yaml"


@pytest.mark.slow
def test_a_folder_dataset_goes_through_run_end_to_end(tmp_path):
    folder = make_image_folder(tmp_path / "images")
    cfg = {
        "name": "folder", "seed": 1, "data": str(folder), "space": str(SPACE),
        "teacher": {"train": {"epochs": 6, "batch_size": 16}},
        "devices": [{"device": "x86-cpu-onnxruntime", "budget_fraction": 0.5}],
        "profile": {"use_shipped": False, "rounds": 1, "runs": 5, "validate_samples": 6, "validate_rounds": 1,
                    "warmup_s": 0.05},
        "train": {"epochs": 2, "batch_size": 16},
        "rate": {"calib_images": 32, "rate_images": 6, "rate_chunk": 4},
        "search": {"top_k": 3, "confirm_top": 0},
        "retrain": {"epochs": 2, "batch_size": 16, "kd_weight": 0.5, "init_supernet": True, "val_images": 16},
        "export": [{"to": "onnx"}],
        "verify": {"latency_advisory": True},  # a CI machine's timing decides no test
        "compute": {"device": "cpu", "workers": 1, "checkpoint_every": 3},
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    r = runner.invoke(app, ["run", str(path), "--out", str(out), "-f", "json"])
    assert r.exit_code == 0, r.output[-3000:]
    summary = json.loads(r.output[r.output.index("{"):])
    assert summary["verification"] is True
    resolved = str(folder.resolve())
    supernet = json.loads((out / "supernet" / "supernet.json").read_text())
    assert supernet["data"]["data"] == resolved and supernet["data"]["classes"] == 4
    assert supernet["compute"]["device"] == "cpu" and supernet["compute"]["workers"] == 1
    ratings = json.loads((out / "ratings.json").read_text())
    assert ratings["data"]["rate_images"] == 6 and ratings["data"]["fingerprint"] == supernet["data"]["fingerprint"]
    model = torch.load(out / "retrain" / "model.pt", weights_only=True)
    assert model["data"] == resolved and model["num_classes"] == 4
    history = [json.loads(line) for line in (out / "retrain" / "retrain_metrics.jsonl").read_text().splitlines()]
    assert [h["val_images"] for h in history] == [16, 16]  # capped per-epoch validation
    verify = json.loads((out / "export" / "onnx" / "verify.json").read_text())
    assert verify["passed"] is True
    reproduce = (out / "reproduce.sh").read_text()
    assert "--workers 1" in reproduce and "--rate-images 6" in reproduce and "--checkpoint-every 3" in reproduce
