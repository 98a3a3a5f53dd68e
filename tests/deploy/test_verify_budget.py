"""verify holds the deployed network to its latency budget (issue 34): a clear miss fails with its
own exit code and one line; --latency-advisory makes it a warning. The budgets are set far from
the measured latency (a thousandth of a millisecond, a second), so no verdict depends on timing."""

import json

import pytest
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.deploy.export import export_model
from dna_deploy.deploy.verify import judge_budget
from dna_deploy.settings import ExportSettings

runner = CliRunner()
DEVICE = "x86-cpu-onnxruntime"  # a shipped device spec: onnxruntime, fp32


@pytest.fixture(scope="module")
def onnx_export(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "onnx"
    export_model(tiny_model[0], out, ExportSettings(to="onnx"))
    return out


def test_judge_budget_within_the_noise_band_is_met_and_a_clear_miss_is_not():
    assert judge_budget("d", 1.0, 0.9, (0.88, 0.92))["verdict"] == "met"
    within = judge_budget("d", 1.0, 1.02, (0.99, 1.04))
    assert within["verdict"] == "met within noise" and within["met"]
    miss = judge_budget("d", 0.2235, 0.2634, (0.26, 0.27))
    assert miss["verdict"] == "missed" and not miss["met"]
    assert miss["line"] == "d: 0.2634 ms measured, budget 0.2235 ms (+18 %)"


def test_the_band_scales_each_round_by_its_speed_probe():
    """Rounds timed while the host ran 2 % slower than its fastest probe: the band's low end is the
    network's figure at full speed, so a miss by less than the host's drift is within the noise."""
    from dna_deploy.deploy.verify import round_band

    rounds = [[0.287] * 20, [0.288] * 20, [0.2875] * 20]
    assert round_band(rounds) == (0.287, 0.288)  # no probes: as measured
    low, high = round_band(rounds, probes=[1.02, 1.02, 1.03], fastest_probe_ms=1.0)
    assert abs(low - 0.2875 / 1.03) < 1e-12 and high == 0.288  # the round that scales lowest
    assert judge_budget("d", 0.2858, 0.287, (low, high))["verdict"] == "met within noise"
    assert round_band(rounds, probes=[0.9, 0.9, 0.9], fastest_probe_ms=1.0)[0] == 0.287  # never scaled up


def test_verify_fails_on_a_budget_the_artifact_clearly_misses_and_passes_with_latency_advisory(onnx_export):
    r = runner.invoke(app, ["verify", str(onnx_export), "--max-images", "64", "--budget-ms", f"{DEVICE}=0.001",
                            "--max-extra-rounds", "0"])
    assert r.exit_code == 3, r.output
    error = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].startswith(f"error: {DEVICE}: ") and "ms measured, budget 0.001 ms (+" in error[0]
    report = json.loads((onnx_export / "verify.json").read_text())
    (held,) = report["budgets"]
    assert held["verdict"] == "missed" and held["artifact"] == "model.onnx" and held["statistic"] == "p10_ms"
    assert held["measured_ms"] == report["artifacts"][0]["stats"]["measured_ms"]
    assert not report["passed"] and not report["artifacts"][0]["checks"]["latency_budget"]["pass"]

    r = runner.invoke(app, ["verify", str(onnx_export), "--max-images", "64", "--budget-ms", f"{DEVICE}=0.001",
                            "--max-extra-rounds", "0", "--latency-advisory"])
    assert r.exit_code == 0, r.output
    assert f"warning: {DEVICE}: " in r.output and "latency budget missed" in r.output
    report = json.loads((onnx_export / "verify.json").read_text())
    assert report["passed"] and report["budgets"][0]["verdict"] == "missed" and report["budgets"][0]["advisory"]


def test_verify_passes_a_budget_met_and_names_a_budget_nothing_runs_on(onnx_export):
    r = runner.invoke(app, ["verify", str(onnx_export), "--max-images", "64", "--budget-ms", f"{DEVICE}=1000",
                            "--budget-ms", "x86-cpu-litert=1000", "--max-extra-rounds", "0", "-f", "json"])
    assert r.exit_code == 0, r.output
    report = json.loads((onnx_export / "verify.json").read_text())
    assert [b["verdict"] for b in report["budgets"]] == ["met"] and report["passed"]
    assert any("x86-cpu-litert: no artifact verified here runs on litert fp32" in n for n in report["notes"])


def test_a_malformed_budget_is_one_clear_error(onnx_export):
    r = runner.invoke(app, ["verify", str(onnx_export), "--budget-ms", "0.2"])
    assert r.exit_code == 1 and "give DEVICE=MS" in r.output
