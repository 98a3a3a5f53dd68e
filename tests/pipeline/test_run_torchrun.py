"""`torchrun --nproc-per-node N -m dna_deploy run PIPELINE`: the distributed stages (teacher, train,
rate, retrain) run on every rank, the rest on rank 0, which reports (issue 31). Two gloo ranks on
the CPU, end to end, on the smoke pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import torch

SMOKE = Path(__file__).with_name("smoke.yaml")


def test_a_pipeline_runs_under_torchrun_with_two_ranks(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dna_deploy",
           "run", str(SMOKE), "--out", str(out), "-f", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    summary = json.loads(r.stdout)  # rank 0 alone prints the summary
    assert summary["architecture"] and (out / "report.md").is_file()
    assert json.loads((out / "supernet" / "supernet.json").read_text())["world_size"] == 2
    ratings = json.loads((out / "ratings.json").read_text())
    assert ratings["compute"]["world_size"] == 2 and all(b["sharding"]["ranks"] == 2 for b in ratings["blocks"])
    state = json.loads((out / "pipeline_state.json").read_text())
    assert all(s["finished"] for s in state["stages"].values())
    teacher = torch.load(next(out.glob("teacher*.pt")), weights_only=True)
    assert teacher  # trained by both ranks, written by rank 0
