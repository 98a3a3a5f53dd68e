import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.errors import DataError
from dna_deploy.pipeline.config import load_pipeline
from dna_deploy.pipeline.runner import run_pipeline

runner = CliRunner()
pytestmark = pytest.mark.slow  # each test runs a whole (reduced) pipeline
SMOKE = Path(__file__).with_name("smoke.yaml")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = runner.invoke(app, ["run", str(SMOKE), "--out", str(out), "-f", "json"])
    assert r.exit_code == 0, r.output[-3000:]
    return out, json.loads(r.output[r.output.index("{"):])


def test_reduced_pipeline_end_to_end(smoke_run, tiny):
    out, summary = smoke_run
    state = json.loads((out / "pipeline_state.json").read_text())
    assert set(state["stages"]) == {"teacher", "tables", "train", "rate", "search", "retrain", "baseline", "export", "verify",
                                    "report"}
    assert state["stages"]["baseline"]["result"]["peers"] == []  # not asked for: nothing retrained
    search = json.loads((out / "search.json").read_text())
    best = search["results"][0]
    budget = search["budgets_ms"]["x86-cpu-onnxruntime"]
    assert best["latency_ms:x86-cpu-onnxruntime"] <= budget + 1e-9
    assert budget < search["largest_predicted_ms"]["x86-cpu-onnxruntime"]  # the budget rules out the largest
    assert summary["architecture"] == best["arch"] and summary["verification"] is True
    tiny.parse_arch(best["arch"])
    report = (out / "report.md").read_text()
    for heading in ("Chosen architecture", "Latency: predicted vs measured", "Accuracy per runtime", "Pareto front",
                    "Latency-table fidelity", "Block-wise distillation", "Reproduce each stage"):
        assert f"## {heading}" in report
    assert best["arch"] in report and "dna-deploy rate --space tiny" in report
    for png in ("pareto.png", "block_losses.png", "tables/x86-cpu-onnxruntime__tiny.fidelity.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "report.html").read_text().startswith("<!doctype html>")
    verify = json.loads((out / "export/onnx/verify.json").read_text())
    assert verify["passed"] and verify["artifacts"][0]["stats"]["predicted_ms"] is not None


def test_seed_one_run_verifies_on_images_it_never_trained_on(smoke_run):
    """The smoke run uses seed 1. The split must not move with it: verification and int8
    calibration read the same split as training, so the three parts stay disjoint."""
    from dna_deploy.data import load_data

    out, _ = smoke_run
    assert yaml.safe_load(SMOKE.read_text())["seed"] == 1
    data = load_data("mnist", 32)
    train, rate, val = (set(s.indices) for s in (data.train, data.rate, data.val))
    assert not (train & rate) and not (train & val) and not (rate & val)
    model = torch.load(out / "retrain" / "model.pt", weights_only=True)
    verify = json.loads((out / "export/onnx/verify.json").read_text())
    ratings = json.loads((out / "ratings.json").read_text())
    supernet = json.loads((out / "supernet" / "supernet.json").read_text())
    fps = {model["data_fingerprint"], verify["data_fingerprint"], ratings["data"]["fingerprint"],
           supernet["data"]["fingerprint"]}
    assert fps == {data.fingerprint} and verify["split"] == "val" and verify["images"] <= len(val)


def test_rerun_skips_finished_stages_and_reruns_changed_ones(smoke_run, tmp_path):
    out, _ = smoke_run
    logs = []
    run_pipeline(SMOKE, out=out, show_progress=False, log=logs.append)
    skipped = [m for m in logs if "up to date" in m]
    assert len(skipped) == 9 and "[report] running" in logs  # everything but the report is reused
    logs.clear()  # the same folder spelled another way: the report's relative image paths still resolve
    run_pipeline(SMOKE, out=out.parent / ".." / out.parent.name / out.name, show_progress=False, log=logs.append)
    assert "[report] running" in logs and "](tables/x86-cpu-onnxruntime__tiny.fidelity.png)" in (out / "report.md").read_text()
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["search"]["top_k"] = 2  # change the search: search and everything after it rerun
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    logs.clear()
    run_pipeline(changed, out=out, show_progress=False, log=logs.append)
    ran = {m.split("]")[0][1:] for m in logs if "running" in m}
    assert {"search", "retrain", "baseline", "export", "verify"} <= ran and not ({"teacher", "tables", "train", "rate"} & ran)


def test_bad_pipeline_files(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("space: tiny\ndevices: []\n")
    with pytest.raises(DataError, match="at least one device"):
        load_pipeline(p)
    p.write_text("space: tiny\ndevices: [{device: x86-cpu-onnxruntime}]\ntrian: {}\n")
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 1 and "unknown key 'trian'; did you mean 'train'" in r.output
    r = runner.invoke(app, ["run", str(tmp_path / "none.yaml")])
    assert r.exit_code == 1 and "pipeline file not found" in r.output


def test_quickstart_file_is_valid():
    from dna_deploy.pipeline.runner import quickstart_config

    cfg = load_pipeline(quickstart_config())
    assert cfg.space == "tiny"
    assert {d.device for d in cfg.devices} == {"x86-cpu-onnxruntime", "x86-cpu-litert", "x86-cpu-litert-int8"}
    int8 = next(d for d in cfg.devices if d.device == "x86-cpu-litert-int8")
    assert int8.budget_ms is None and int8.budget_fraction is None  # predicted for verify, not a search limit


def test_progressive_rounds_distil_from_the_previous_winner(smoke_run):
    """DNA+: round 2's teacher is round 1's retrained network; round 1 is reused, not rerun."""
    import torch

    out, _ = smoke_run
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["progressive"] = {"rounds": 2}
    path = out / "progressive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logs = []
    r = run_pipeline(path, out=out, show_progress=False, log=logs.append)
    assert [x["round"] for x in r["rounds"]] == [1, 2]
    first_round = logs[: logs.index("[DNA+ round 2] teacher: the round 1 network")]
    assert not any(m in first_round for m in ("[teacher] running", "[tables] running", "[train] running", "[rate] running"))
    round2 = out / "round2"
    state = json.loads((round2 / "pipeline_state.json").read_text())
    assert state["stages"]["teacher"]["result"]["teacher"] == str(out / "retrain" / "model.pt")
    meta = json.loads((round2 / "supernet" / "supernet.json").read_text())
    round1_model = torch.load(out / "retrain" / "model.pt", weights_only=True)
    assert meta["teacher"]["arch"] == round1_model["arch"]
    assert (round2 / "report.md").is_file() and json.loads((out / "progressive.json").read_text())[1]["round"] == 2


def test_reproduce_commands_give_the_same_artifacts(smoke_run, tmp_path):
    """The commands the report lists, run by hand into another folder, rebuild the same artifacts:
    ratings, search result, retrained weights, export and verification (the tables are copied,
    since timings are the one thing a rerun cannot reproduce)."""
    import shlex
    import shutil

    import torch

    out, _ = smoke_run
    script = (out / "reproduce.sh").read_text()
    assert "\n# tables\n" in script and "dna-deploy profile validate" in script
    new = tmp_path / "again"
    shutil.copytree(out / "tables", new / "tables")
    stage = None
    for line in script.splitlines():
        if line.startswith("# "):
            stage = line[2:]
            continue
        if not line.startswith("dna-deploy ") or stage == "tables":
            continue
        args = [a.replace(str(out), str(new)) for a in shlex.split(line)[1:]]
        r = runner.invoke(app, args + ["-f", "json"])
        assert r.exit_code == 0, f"{line}\n{r.output[-2000:]}"
    old_r, new_r = (json.loads((d / "ratings.json").read_text()) for d in (out, new))
    for b_old, b_new in zip(old_r["blocks"], new_r["blocks"]):
        for name, c in b_old["candidates"].items():
            assert b_new["candidates"][name]["loss"] == pytest.approx(c["loss"], rel=1e-5, abs=1e-7)
    old_s, new_s = (json.loads((d / "search.json").read_text()) for d in (out, new))
    assert [r["arch"] for r in new_s["results"]] == [r["arch"] for r in old_s["results"]]
    old_m, new_m = (torch.load(d / "retrain" / "model.pt", weights_only=True) for d in (out, new))
    assert old_m["arch"] == new_m["arch"] and old_m["metrics"]["val_accuracy"] == new_m["metrics"]["val_accuracy"]
    for k, v in old_m["state_dict"].items():
        assert torch.allclose(v.float(), new_m["state_dict"][k].float(), rtol=1e-4, atol=1e-5), k
    old_v, new_v = (json.loads((d / "export/onnx/verify.json").read_text()) for d in (out, new))
    assert new_v["passed"] and new_v["pytorch_accuracy"] == old_v["pytorch_accuracy"]


def test_dnapp_pipeline_without_a_teacher(tmp_path):
    """`train: {method: dna++}` and no teacher section: no teacher stage, DNA++ ratings, labels-only retraining."""
    smoke = Path(__file__).with_name("smoke_dnapp.yaml")
    r = runner.invoke(app, ["run", str(smoke), "--out", str(tmp_path), "-f", "json"])
    assert r.exit_code == 0, r.output[-3000:]
    state = json.loads((tmp_path / "pipeline_state.json").read_text())
    assert state["stages"]["teacher"]["result"]["teacher"] is None and not (tmp_path / "teacher.pt").exists()
    ratings = json.loads((tmp_path / "ratings.json").read_text())
    assert ratings["method"] == "dna++" and ratings["metric"] == "ssl-cosine"
    assert sum(len(b["candidates"]) for b in ratings["blocks"]) == 600
    model = torch.load(tmp_path / "retrain" / "model.pt", weights_only=True)
    assert model["metrics"]["kd_weight"] == 0.0
    script = (tmp_path / "reproduce.sh").read_text()
    assert "--method dna++" in script and "--teacher" not in script
    report = (tmp_path / "report.md").read_text()
    assert "No teacher (DNA++)" in report and json.loads((tmp_path / "export/onnx/verify.json").read_text())["passed"]
