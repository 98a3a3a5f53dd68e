import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.distill.student import BlockStudent, feature_distance, load_block
from dna_deploy.distill.teacher import load_teacher
from dna_deploy.errors import DataError
from dna_deploy.space import BlockDef, load_space

runner = CliRunner()


def test_teacher_learns(tiny_teacher):
    _, result = tiny_teacher
    assert result["val_accuracy"] > 0.5  # 40 steps on MNIST: far above chance (0.1)


def test_every_block_loss_falls(tiny_supernet, tiny):
    _, result = tiny_supernet
    assert set(result) == set(range(len(tiny.blocks)))
    for b, r in result.items():
        losses = [h["loss"] for h in r["history"]]
        assert len(losses) == 3 and losses[-1] < losses[0], (b, losses)


def test_trained_block_beats_untrained_on_held_out_data(tiny_supernet, tiny, mnist32, tiny_teacher):
    from dna_deploy.data import stack

    out, _ = tiny_supernet
    teacher = load_teacher(str(tiny_teacher[0]), tiny)
    x, _ = stack(mnist32.rate, 128)
    feats = teacher.features(x)
    b = 2
    trained, state = load_block(tiny, out, b)
    fresh = BlockStudent(tiny, b, teacher.channels)
    ops = tiny.largest_arch().blocks[b]
    with torch.no_grad():
        d_trained = feature_distance(trained.eval()(feats[b - 1], ops), feats[b], "mse-channel", state["channel_std"])
        d_fresh = feature_distance(fresh.eval()(feats[b - 1], ops), feats[b], "mse-channel", state["channel_std"])
    assert d_trained < d_fresh


@pytest.mark.slow
def test_resume_after_kill(tmp_path, tiny_teacher):
    args = ["train", "-s", "tiny", "--teacher", str(tiny_teacher[0]), "-o", str(tmp_path), "--blocks", "0",
            "--epochs", "40", "--max-steps", "3", "-f", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "dna_deploy", *args], stdout=subprocess.DEVNULL)
    ckpt = tmp_path / "block0.pt"
    deadline = time.time() + 180
    while time.time() < deadline:
        if ckpt.is_file() and torch.load(ckpt, weights_only=True)["epoch"] >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 2 <= done < 40
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    state = torch.load(ckpt, weights_only=True)
    history = json.loads(state["history"])
    assert [h["epoch"] for h in history] == list(range(1, 41))


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path, tiny_teacher):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dna_deploy", "train",
           "-s", "tiny", "--teacher", str(tiny_teacher[0]), "-o", str(tmp_path), "--blocks", "1",
           "--epochs", "2", "--max-steps", "6", "-f", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((tmp_path / "supernet.json").read_text())
    assert meta["world_size"] == 2
    history = json.loads(torch.load(tmp_path / "block1.pt", weights_only=True)["history"])
    assert len(history) == 2 and history[-1]["loss"] < history[0]["loss"]


def test_teacher_resolution_mismatch_is_refused(tiny_teacher):
    tiny = load_space("tiny")
    other = dataclasses.replace(tiny, blocks=tiny.blocks[:-1] + (BlockDef(64, 2, 2),))  # last block strides
    with pytest.raises(DataError, match="block 3 of space 'tiny' ends at 2x2"):
        load_teacher(str(tiny_teacher[0]), other)


@pytest.fixture
def resnet_space():
    """A space whose block ends match resnet18's layer1..layer4 at 64x64 input."""
    blocks = tuple(BlockDef(c, 2, 2) for c in (24, 40, 64, 96))
    return dataclasses.replace(load_space("tiny"), name="r", input_size=64, stem_stride=2, blocks=blocks)


def test_torchvision_teacher_default_taps_and_adapters(tmp_path, resnet_space):
    import torchvision

    w = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), w)
    t = load_teacher("torchvision:resnet18", resnet_space, weights=w)
    assert t.taps == ["layer1", "layer2", "layer3", "layer4"] and t.channels == [64, 128, 256, 512]
    x = torch.randn(2, 3, 64, 64)
    feats = t.features(x)
    student = BlockStudent(resnet_space, 1, t.channels)  # 64 -> 24 in, 40 -> 128 out
    out = student(feats[0], resnet_space.largest_arch().blocks[1])
    assert out.shape == feats[1].shape


def test_torchvision_teacher_bad_inputs(tmp_path, resnet_space, tiny):
    import torchvision

    w = tmp_path / "m.pth"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10).state_dict(), w)
    with pytest.raises(DataError, match="do not fit torchvision:resnet18"):
        load_teacher("torchvision:resnet18", resnet_space, weights=w)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), w)
    with pytest.raises(DataError, match="unknown tap 'layer9'"):
        load_teacher("torchvision:resnet18", resnet_space, weights=w, taps=["layer1", "layer2", "layer3", "layer9"])
    with pytest.raises(DataError, match="features for block 0|ends at"):
        load_teacher("torchvision:resnet18", tiny, weights=w)  # 32x32 input: resolutions do not match
    with pytest.raises(DataError, match="needs --teacher-weights"):
        load_teacher("torchvision:resnet18", resnet_space)


def test_cli_bad_inputs(tmp_path):
    r = runner.invoke(app, ["train", "-s", "tiny", "--teacher", str(tmp_path / "none.pt"), "-o", str(tmp_path)])
    assert r.exit_code == 1 and "teacher checkpoint not found" in r.output
    r = runner.invoke(app, ["train", "-s", "tiny", "--data", str(tmp_path / "nodata"), "--teacher", "x.pt", "-o", str(tmp_path)])
    assert r.exit_code == 1 and "not found" in r.output
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"\x80\x04\x95not a real pickle")
    # -o a fresh folder: the user's folder holding evil.pt is itself refused as an output (issue 35)
    r = runner.invoke(app, ["train", "-s", "tiny", "--teacher", str(evil), "-o", str(tmp_path / "out")])
    assert r.exit_code == 1 and "is not a dna-deploy checkpoint" in r.output and "weights_only" not in r.output
