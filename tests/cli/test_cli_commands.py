"""Every command through Typer's runner, on small real work (the library tests go deeper)."""

import json

import pytest
import torch
from typer.testing import CliRunner

from dna_deploy.cli.app import app

runner = CliRunner()


def invoke(*args):
    r = runner.invoke(app, [*map(str, args), "-f", "json"])
    assert r.exit_code == 0, r.output[-2000:]
    return json.loads(r.output[r.output.index("{") if r.output.lstrip().startswith("{") else r.output.index("["):])


def test_devices_list():
    rows = invoke("devices", "list")
    by = {r["name"]: r for r in rows}
    assert by["x86-cpu-onnxruntime"]["usable here"] is True
    assert by["jetson-orin-tensorrt-fp16"]["runtime"] == "tensorrt"


def test_profile_predict_validate(tmp_path, tiny):
    table = tmp_path / "t.json"
    s = invoke("profile", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "-o", table, "--rounds", "1", "--runs", "5",
               "--warmup-s", "0.02", "--max-extra-rounds", "0")
    assert s["entries"] == len(tiny.all_layer_specs())
    arch = str(tiny.smallest_arch())
    p = invoke("profile", "predict", "-s", "tiny", "-t", table, arch)
    assert p[0]["arch"] == arch and p[0]["calibrated"] is False and p[0]["raw_sum_ms"] > 0
    v = invoke("profile", "validate", "-s", "tiny", "-t", table, "-n", "8", "--warmup-s", "0.02", "--rounds", "1",
               "--max-extra-rounds", "1")
    assert v["calibration"]["a"] > 0 and (tmp_path / "t.fidelity.png").is_file()
    p = invoke("profile", "predict", "-s", "tiny", "-t", table, arch)
    assert p[0]["calibrated"] is True


def test_teacher_train(tmp_path):
    r = invoke("teacher", "train", "-s", "tiny", "-o", tmp_path / "t.pt", "--epochs", "1", "--max-steps", "5",
               "--arch", "k3e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip")
    ckpt = torch.load(tmp_path / "t.pt", weights_only=True)
    assert r["val_accuracy"] == ckpt["metrics"]["val_accuracy"] and r["epochs"] == 1
    assert ckpt["format"] == "dna-deploy-teacher/1" and ckpt["arch"] == "k3e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip"


def test_rate_and_retrain(tmp_path, tiny_supernet, tiny_teacher):
    rows = invoke("rate", "-s", "tiny", "--supernet", tiny_supernet[0], "--teacher", tiny_teacher[0],
                  "-o", tmp_path / "r.json", "--calib-images", "64", "--blocks", "3")
    assert rows[0]["block"] == 3 and rows[0]["candidates"] == 42 and rows[0]["best_loss"] <= rows[0]["worst_loss"]
    arch = "k3e3.skip|k3e3.k3e3.skip|k3e3.k3e3.skip|k3e3.skip"
    r = invoke("retrain", "-s", "tiny", "-a", arch, "-o", tmp_path / "re", "--epochs", "1", "--max-steps", "5",
               "--teacher", tiny_teacher[0], "--init-supernet", tiny_supernet[0])
    assert r["arch"] == arch and r["init"] == "supernet" and r["kd_weight"] == 0.5
    assert (tmp_path / "re" / "model.pt").is_file()


@pytest.mark.parametrize("cmd", [["quickstart", "--help"], ["run", "--help"], ["train", "--help"]])
def test_help_has_an_example(cmd):
    r = runner.invoke(app, cmd)
    assert r.exit_code == 0 and "Example" in r.output


def test_space_is_read_from_the_artifact(tmp_path):
    """No --space: the table says it is for tiny, so a tiny architecture is predicted, not refused."""
    from dna_deploy.io import shipped_dir

    table = shipped_dir("latency_tables") / "x86-cpu-onnxruntime__tiny.json"
    rows = invoke("profile", "predict", "-t", table, "k3e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip")
    assert rows[0]["raw_sum_ms"] > 0


def test_retrain_into_a_folder_of_another_architecture_starts_afresh(tmp_path):
    for arch in ("k3e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip", "k5e3.skip|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip"):
        r = invoke("retrain", "-s", "tiny", "-a", arch, "-o", tmp_path / "re", "--epochs", "1", "--max-steps", "3")
        assert r["arch"] == arch
    lines = (tmp_path / "re" / "retrain_metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # the first network's epoch is not listed as the second's
