"""The shared epoch loop bookkeeping: checkpoint first, metrics after, and resume makes them agree."""

import json

import torch

from dna_deploy.distill.loop import EpochCheckpoint


def test_resume_lists_each_epoch_once_and_keeps_other_runs_lines(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"block": 1, "epoch": 1, "loss": 9.0}) + "\n")  # another block's line
    model = torch.nn.Linear(2, 2)
    ck = EpochCheckpoint(tmp_path / "b0.pt", identity={"config": {"lr": 1}}, metrics_path=metrics, key={"block": 0})
    start, history, _ = ck.resume({"model": model})
    assert start == 0 and history == []
    history.append({"epoch": 1, "loss": 0.5})
    ck.save({"model": model}, epoch=1, history=history)
    # a run killed after writing epoch 2's metrics line but before its checkpoint (the old order)
    with open(metrics, "a") as f:
        f.write(json.dumps({"block": 0, "epoch": 2, "loss": 0.4}) + "\n")
    with open(metrics, "a") as f:
        f.write('{"block": 0, "epo')  # and a line cut mid-write
    fresh = torch.nn.Linear(2, 2)
    start, history, _ = EpochCheckpoint(tmp_path / "b0.pt", identity={"config": {"lr": 1}}, metrics_path=metrics,
                                        key={"block": 0}).resume({"model": fresh})
    assert start == 1 and [h["epoch"] for h in history] == [1]
    assert torch.equal(fresh.weight, model.weight)
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert lines == [{"block": 1, "epoch": 1, "loss": 9.0}, {"block": 0, "epoch": 1, "loss": 0.5}]


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    model = torch.nn.Linear(2, 2)
    EpochCheckpoint(tmp_path / "c.pt", identity={"arch": "a"}).save({"model": model}, epoch=3, history=[{"epoch": 3}])
    start, history, _ = EpochCheckpoint(tmp_path / "c.pt", identity={"arch": "b"}).resume({"model": torch.nn.Linear(2, 2)})
    assert start == 0 and history == []
