import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.errors import DataError
from dna_deploy.pipeline import load_pipeline, run_pipeline

runner = CliRunner()
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
    assert set(state["stages"]) == {"teacher", "tables", "train", "rate", "search", "retrain", "export", "verify", "report"}
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


def test_rerun_skips_finished_stages_and_reruns_changed_ones(smoke_run, tmp_path):
    out, _ = smoke_run
    logs = []
    run_pipeline(SMOKE, out=out, show_progress=False, log=logs.append)
    skipped = [m for m in logs if "up to date" in m]
    assert len(skipped) == 8 and "[report] running" in logs  # everything but the report is reused
    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["search"]["top_k"] = 2  # change the search: search and everything after it rerun
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(cfg))
    logs.clear()
    run_pipeline(changed, out=out, show_progress=False, log=logs.append)
    ran = {m.split("]")[0][1:] for m in logs if "running" in m}
    assert {"search", "retrain", "export", "verify"} <= ran and not ({"teacher", "tables", "train", "rate"} & ran)


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
    from dna_deploy.pipeline import quickstart_config

    cfg = load_pipeline(quickstart_config())
    assert cfg["space"] == "tiny" and {d["device"] for d in cfg["devices"]} == {"x86-cpu-onnxruntime", "x86-cpu-litert"}


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
