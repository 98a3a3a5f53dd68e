"""The scale path on CPU: folder data streamed by loader workers, the teacher on the fly or from an
fp16 disk cache, 2 gloo ranks for training and rating, mid-epoch resume, progress as log lines.

The CUDA path is the same code with another `Compute`; its test runs only where a GPU is visible."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.compute import Compute, EpochBatches, resolve_device
from dna_deploy.data import load_data
from dna_deploy.distill.blockwise import relative_floor, train_blocks
from dna_deploy.distill.teacher import load_teacher, train_space_teacher
from dna_deploy.errors import DataError
from dna_deploy.settings import ClassifierConfig, ComputeSettings, DistillConfig
from dna_deploy.space import load_space

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from imagefolder import make_image_folder  # noqa: E402

runner = CliRunner()
SPACE = str(Path(__file__).resolve().parent.parent / "data" / "mbconv64.yaml")
CPU = Compute.from_settings(ComputeSettings(device="cpu", workers=1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def folder_teacher(tmp_path_factory, folder):
    space = load_space(SPACE)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    r = train_space_teacher(space, load_data(str(folder), space.input_size), path, show_progress=False,
                            config=ClassifierConfig(epochs=6, batch_size=16), compute=CPU)
    assert r["val_accuracy"] > 0.4  # 4 classes: it learned something from the streamed, augmented images
    return path


def _torchrun(args: list[str], n: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), "-m", "dna_deploy", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_epoch_batches_share_every_batch_and_skip_on_resume():
    one = list(EpochBatches(50, 16, seed=3))
    assert [len(b) for b in one] == [16, 16, 16, 2]
    ranks = [list(EpochBatches(50, 16, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4  # every rank takes every step (DDP)
    for step in range(4):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(one[step])
    assert list(EpochBatches(50, 16, seed=3, start=2)) == one[2:]  # a resumed epoch: the batches not yet seen
    assert len(EpochBatches(49, 16, seed=3, world=2)) == 3  # a last batch of 1 image cannot feed 2 ranks


def test_relative_floor_tames_a_dead_channel():
    std = torch.tensor([1.0, 0.8, 1.2, 1e-9])
    floored = relative_floor(std)
    assert floored[:3].tolist() == std[:3].tolist()
    assert floored[3] == pytest.approx(0.01 * float(std.median()))


def test_device_choice_is_checked():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DataError, match="no CUDA GPU is visible"):
            resolve_device("cuda")
    with pytest.raises(DataError, match="use auto, cpu, cuda or cuda:N"):
        ComputeSettings(device="tpu")
    r = runner.invoke(app, ["train", "--method", "dna++", "-s", "tiny", "-o", "/tmp/never", "--device", "gpu"])
    assert r.exit_code != 0 and "use auto, cpu, cuda or cuda:N" in r.output


def test_cpu_trains_in_channels_last_like_nchw(tmp_path, mnist32):
    """The CPU keeps convolutions in channels_last by default (bench/train_layout.py measures the
    speed). It is a memory layout, not another model: the same batch gives the same
    loss and gradients as NCHW up to float rounding, training follows the same loss curve,
    and its checkpoint loads into a plain NCHW network with the same outputs."""
    import torch.nn.functional as F

    from dna_deploy.data import stack
    from dna_deploy.distill.supervised import train_classifier
    from dna_deploy.nn.builder import build_network

    space = load_space("tiny")
    arch = space.parse_arch("k5e6.k3e3|k3e6.k7e3.skip|k5e3.k3e3.skip|k7e6.skip")
    assert CPU.channels_last  # the default on every device
    layouts = {cl: Compute.from_settings(ComputeSettings(device="cpu", workers=0, channels_last=cl)) for cl in (True, False)}
    x, y = stack(mnist32.train, 32)
    grads = {}
    for cl, compute in layouts.items():
        torch.manual_seed(0)
        net = compute.module(build_network(space, arch))
        loss = F.cross_entropy(net(compute.batch(x)), y)
        loss.backward()
        grads[cl] = [loss.detach()] + [p.grad for p in net.parameters()]
    # fp32 NHWC kernels are less exact than NCHW (4e-4 against 4e-6 of float64's gradients, relative,
    # here); both are far inside minibatch noise. Gradients that are 0 in exact arithmetic are skipped.
    total = torch.cat([g.flatten() for g in grads[False]]).norm()
    for a, b in zip(grads[True], grads[False]):
        if b.norm() > 1e-3 * total:
            assert float((a - b).norm() / b.norm()) < 2e-3

    nets, losses = {}, {}
    for cl, compute in layouts.items():
        torch.manual_seed(0)
        nets[cl] = build_network(space, arch)
        r = train_classifier(nets[cl], mnist32, tmp_path / f"cl{cl}.pt", config=ClassifierConfig(epochs=2, max_steps=6),
                             resume=False, show_progress=False, compute=compute)
        conv = next(m for m in nets[cl].modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == cl
        losses[cl] = [h[k] for h in r["history"] for k in ("train_loss", "val_loss")]
    assert np.allclose(losses[True], losses[False], rtol=1e-3)
    fresh = build_network(space, arch).eval()
    fresh.load_state_dict(nets[True].state_dict())  # a channels_last checkpoint into an NCHW network
    with torch.no_grad():
        assert torch.allclose(fresh(x), nets[True].eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible on this machine)")
def test_cuda_training_and_rating_match_the_cpu(tmp_path, folder, folder_teacher):
    """The same seed trains and rates on CUDA and on the CPU. In fp32 (TF32 off) the two must agree:
    per-epoch distillation losses within 1e-3 and every candidate's rating within 1e-3 (relative;
    kernels differ, so float rounding differs, and training amplifies it a little). With the GPU's
    mixed precision (bf16 where native, else fp16) ratings stay within 5e-2 and rank the candidates
    alike (Kendall tau > 0.9): what the search reads is the order."""
    from scipy import stats

    from dna_deploy.select.rate import rate_supernet

    space = load_space(SPACE)
    data = load_data(str(folder), space.input_size)
    teacher = load_teacher(str(folder_teacher), space)
    cfg = DistillConfig(epochs=2, batch_size=16)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        computes = {"cpu": Compute.from_settings(ComputeSettings(device="cpu", workers=0)),
                    "cuda": Compute.from_settings(ComputeSettings(device="cuda", workers=0, amp=False)),
                    "cuda-amp": Compute.from_settings(ComputeSettings(device="cuda", workers=0, amp=True))}
        losses, ratings = {}, {}
        for name in ("cpu", "cuda"):
            res = train_blocks(space, data, teacher, tmp_path / name, config=cfg, compute=computes[name], show_progress=False)
            losses[name] = [h["loss"] for b in sorted(res) for h in res[b]["history"]]
        # every rating from the CPU's supernet: the rating's own agreement, apart from training's
        for name, compute in computes.items():
            r = rate_supernet(space, tmp_path / "cpu", teacher, data, tmp_path / f"ratings-{name}.json", compute=compute,
                              show_progress=False, rate_chunk=7)
            ratings[name] = {k: c["loss"] for b in r["blocks"] for k, c in ((f"{b['block']}:{k}", c)
                                                                             for k, c in b["candidates"].items())}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert np.allclose(losses["cuda"], losses["cpu"], rtol=1e-3), (losses["cuda"], losses["cpu"])
    keys = sorted(ratings["cpu"])
    cpu = np.array([ratings["cpu"][k] for k in keys])
    assert np.allclose([ratings["cuda"][k] for k in keys], cpu, rtol=1e-3)
    amp = np.array([ratings["cuda-amp"][k] for k in keys])
    assert np.allclose(amp, cpu, rtol=5e-2)
    assert stats.kendalltau(amp, cpu).statistic > 0.9
    meta = json.loads((tmp_path / "ratings-cuda-amp.json").read_text())
    assert meta["compute"]["amp"] == ("bfloat16" if torch.cuda.get_device_capability()[0] >= 8 else "float16")


@pytest.mark.slow
def test_folder_data_trains_and_rates_on_two_gloo_ranks_like_one(tmp_path, folder, folder_teacher):
    """Train with 2 ranks (DDP over gloo, streamed folder data, teacher on the fly), then rate with
    2 ranks (subtrees shared) and with 1: the same ratings."""
    common = ["-s", SPACE, "--teacher", str(folder_teacher), "--workers", "1", "-f", "json"]
    r = _torchrun(["train", *common, "--data", str(folder), "-o", str(tmp_path / "sn"), "--epochs", "2",
                   "--batch-size", "16"])
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "sn" / "supernet.json").read_text())
    assert meta["world_size"] == 2 and meta["data"]["data"] == str(folder.resolve())
    for b in range(3):
        history = json.loads(torch.load(tmp_path / "sn" / f"block{b}.pt", weights_only=True)["history"])
        assert len(history) == 2 and np.isfinite(history[-1]["loss"])
    # no --data: rate takes the supernet's recorded folder, not MNIST
    r2 = _torchrun(["rate", *common, "--supernet", str(tmp_path / "sn"), "-o", str(tmp_path / "r2.json"),
                    "--rate-chunk", "3"])
    assert r2.returncode == 0, r2.stderr[-3000:]
    r4 = _torchrun(["rate", *common, "--supernet", str(tmp_path / "sn"), "-o", str(tmp_path / "r4.json"),
                    "--rate-chunk", "4"], n=4)
    assert r4.returncode == 0, r4.stderr[-3000:]
    r1 = runner.invoke(app, ["rate", *common, "--supernet", str(tmp_path / "sn"), "-o", str(tmp_path / "r1.json")])
    assert r1.exit_code == 0, r1.output
    one, two, four = (json.loads((tmp_path / f).read_text()) for f in ("r1.json", "r2.json", "r4.json"))
    assert two["compute"]["world_size"] == 2 and four["compute"]["world_size"] == 4
    assert one["data"]["data"] == str(folder.resolve())
    assert not list(tmp_path.glob("*.partial.json"))  # merged and cleaned up
    for many in (two, four):
        for b1, b2 in zip(one["blocks"], many["blocks"]):
            assert b1["candidates"].keys() == b2["candidates"].keys()
            for k in b1["candidates"]:
                assert b2["candidates"][k]["loss"] == pytest.approx(b1["candidates"][k]["loss"], rel=1e-5)
    # every rank had work in every block: by candidates where they share evenly, else by images
    for b in four["blocks"]:
        assert len(b["sharding"]["work_per_rank"]) == 4 and min(b["sharding"]["work_per_rank"]) > 0
        assert b["sharding"]["work_max_over_mean"] <= 1.15


@pytest.fixture(scope="module")
def folder_supernet(tmp_path_factory, folder, folder_teacher):
    space = load_space(SPACE)
    out = tmp_path_factory.mktemp("folder_supernet")
    train_blocks(space, load_data(str(folder), space.input_size), load_teacher(str(folder_teacher), space), out,
                 config=DistillConfig(epochs=1, batch_size=16), compute=CPU, show_progress=False)
    return out


def _rate_args(folder_teacher, supernet, out) -> list[str]:
    return ["rate", "-s", SPACE, "--teacher", str(folder_teacher), "--supernet", str(supernet), "-o", str(out),
            "--workers", "0", "--rate-chunk", "2", "--timeout-min", "5", "-f", "json"]


def test_a_rank_that_fails_ends_every_rank_with_one_line_and_a_rerun_resumes(tmp_path, folder_teacher, folder_supernet):
    """Rank 0 cannot write its partial ratings of block 1 (a folder stands where the file goes):
    it tells rank 1, and both end at once with the same one line (rank 1 does not wait in a
    collective for its timeout). Block 0, finished before, is kept; the rerun rates the rest."""
    out = tmp_path / "r.json"
    blocker = tmp_path / "r.block1.rank0-of-2.partial.json"
    blocker.mkdir()
    (blocker / "keep").write_text("")
    failed = _torchrun(_rate_args(folder_teacher, folder_supernet, out))
    assert failed.returncode != 0
    lines = [ln for ln in failed.stderr.splitlines() if ln.startswith("error: rank 0:")]
    assert len(lines) == 2 and "r.block1.rank0-of-2.partial.json" in lines[0], failed.stderr[-3000:]
    assert [b["block"] for b in json.loads(out.read_text())["blocks"]] == [0]  # kept for the rerun
    kept = json.loads(out.read_text())["blocks"][0]
    blocker.joinpath("keep").unlink()
    blocker.rmdir()
    again = _torchrun(_rate_args(folder_teacher, folder_supernet, out))
    assert again.returncode == 0, again.stderr[-3000:]
    table = json.loads(out.read_text())
    assert [b["block"] for b in table["blocks"]] == [0, 1, 2] and table["blocks"][0]["candidates"] == kept["candidates"]
    fresh = runner.invoke(app, _rate_args(folder_teacher, folder_supernet, tmp_path / "fresh.json"))
    assert fresh.exit_code == 0, fresh.output
    for b1, b2 in zip(json.loads((tmp_path / "fresh.json").read_text())["blocks"], table["blocks"]):
        for k, c in b1["candidates"].items():
            assert b2["candidates"][k]["loss"] == pytest.approx(c["loss"], rel=1e-5)


def test_a_killed_rank_ends_the_job_and_a_rerun_resumes(tmp_path, folder_teacher, folder_supernet):
    """SIGKILL on rank 0 in the middle of a block (as the OOM killer would): torchrun ends rank 1
    too (no hang), and the rerun finishes with the ratings of a run never killed."""
    import psutil

    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dna_deploy",
           *_rate_args(folder_teacher, folder_supernet, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and proc.poll() is None and not killed:
        if list(tmp_path.glob("r.block*.rank0-of-2.partial.json")):  # rank 0 is inside a block
            for child in psutil.Process(proc.pid).children(recursive=True):
                try:
                    if child.environ().get("RANK") == "0":
                        child.send_signal(signal.SIGKILL)
                        killed = True
                except psutil.Error:
                    pass
        time.sleep(0.05)
    proc.wait(timeout=300)  # ends: rank 1 does not wait for the dead rank 0
    assert killed and proc.returncode != 0
    again = _torchrun(_rate_args(folder_teacher, folder_supernet, out))
    assert again.returncode == 0, again.stderr[-3000:]
    fresh = runner.invoke(app, _rate_args(folder_teacher, folder_supernet, tmp_path / "fresh.json"))
    assert fresh.exit_code == 0, fresh.output
    for b1, b2 in zip(json.loads((tmp_path / "fresh.json").read_text())["blocks"], json.loads(out.read_text())["blocks"]):
        for k, c in b1["candidates"].items():
            assert b2["candidates"][k]["loss"] == pytest.approx(c["loss"], rel=1e-5)


def test_disk_cache_holds_only_the_taps_asked_for_and_trains_like_the_teacher_on_the_fly(tmp_path, folder,
                                                                                         folder_teacher):
    space = load_space(SPACE)
    data = load_data(str(folder), space.input_size)
    teacher = load_teacher(str(folder_teacher), space)
    cfg = DistillConfig(epochs=1, batch_size=16)
    online = train_blocks(space, data, teacher, tmp_path / "online", config=cfg, blocks=[1], compute=CPU,
                          show_progress=False)
    disk = train_blocks(space, data, teacher, tmp_path / "disk", config=DistillConfig(epochs=1, batch_size=16,
                                                                                      feature_cache="disk"),
                        blocks=[1], compute=CPU, show_progress=False)
    files = sorted(p.name for p in (tmp_path / "disk" / "feature_cache").rglob("*.f16"))
    assert files == ["tap0.f16", "tap1.f16"]  # block 1 reads taps 0 and 1, nothing else
    a, b = online[1]["history"][0]["loss"], disk[1]["history"][0]["loss"]
    assert b == pytest.approx(a, rel=0.02)  # same batches; fp16 storage is the only difference
    with pytest.raises(DataError, match="over feature_cache_gb"):
        train_blocks(space, data, teacher, tmp_path / "big", blocks=[2], compute=CPU, show_progress=False,
                     config=DistillConfig(epochs=1, feature_cache="disk", feature_cache_gb=1e-6))


def test_a_kill_mid_epoch_resumes_to_the_same_weights(tmp_path, tiny_teacher):
    """Checkpoints every 2 steps inside the one epoch; killed there, the resumed run ends with the
    weights of a run never killed (same batches, same paths, restored optimiser)."""
    args = ["train", "-s", "tiny", "--teacher", str(tiny_teacher[0]), "--blocks", "0", "--epochs", "1",
            "--max-steps", "60", "--checkpoint-every", "2", "--device", "cpu", "-f", "json"]
    full = runner.invoke(app, [*args, "-o", str(tmp_path / "full")])
    assert full.exit_code == 0, full.output
    proc = subprocess.Popen([sys.executable, "-m", "dna_deploy", *args, "-o", str(tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "block0.pt"
    deadline = time.time() + 300
    step = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            step = torch.load(ckpt, weights_only=True).get("step", 0) if ckpt.is_file() else 0
        except Exception:  # caught mid-rename
            step = 0
        if step >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(ckpt, weights_only=True)
    assert state["epoch"] == 0 and 6 <= state["step"] < 60  # killed inside the epoch
    resumed = runner.invoke(app, [*args, "-o", str(tmp_path / "killed")])
    assert resumed.exit_code == 0, resumed.output
    a = torch.load(tmp_path / "full" / "block0.pt", weights_only=True)["student"]
    b = torch.load(ckpt, weights_only=True)["student"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    history = json.loads(torch.load(ckpt, weights_only=True)["history"])
    assert [h["epoch"] for h in history] == [1]
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # a mid-epoch checkpoint adds no metrics line


def test_without_a_terminal_progress_is_plain_log_lines(tmp_path):
    env = {**os.environ, "DNA_DEPLOY_PROGRESS": "log", "DNA_DEPLOY_LOG_EVERY": "0"}
    r = subprocess.run([sys.executable, "-m", "dna_deploy", "teacher", "train", "-s", "tiny", "-o",
                        str(tmp_path / "t.pt"), "--epochs", "1", "--max-steps", "3"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("[progress] teacher:")]
    assert lines and "steps/s" in lines[-1] and "img/s" in lines[-1] and "3/3 (100.0%)" in lines[-1]
    assert "ETA" in lines[0]


def test_the_fp16_loss_scale_is_checkpointed(tmp_path, mnist32):
    """fp16 autocast trains with a loss scaler (pre-Ampere GPUs); its scale is state like the
    optimiser's, saved in the checkpoint so that a resumed run continues with it. On the CPU
    here: the same code path, with fp16 autocast forced."""
    import dataclasses

    from dna_deploy.distill.supervised import train_classifier
    from dna_deploy.nn.builder import build_network

    space = load_space("tiny")
    fp16 = dataclasses.replace(CPU, amp_dtype=torch.float16)
    assert fp16.scaler().is_enabled() and not CPU.scaler().is_enabled()
    net = build_network(space, space.parse_arch("k3e3.k3e3|k3e3.k3e3.k3e3|k3e3.k3e3.k3e3|k3e3.k3e3"))
    train_classifier(net, mnist32, tmp_path / "c.pt", config=ClassifierConfig(epochs=1, max_steps=3), compute=fp16,
                     show_progress=False)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    plain = tmp_path / "plain.pt"
    train_classifier(build_network(space, space.parse_arch("k3e3.k3e3|k3e3.k3e3.k3e3|k3e3.k3e3.k3e3|k3e3.k3e3")), mnist32,
                     plain, config=ClassifierConfig(epochs=1, max_steps=3), compute=CPU, show_progress=False)
    assert "scaler" not in torch.load(plain, weights_only=True)  # fp32 and bf16 runs keep their old format


def test_in_ram_teacher_features_keep_only_the_taps_the_blocks_read(tmp_path, mnist32, tiny_teacher):
    """Training block 2 reads taps 1 and 2: the others are not held (every local rank holds its
    own copy); and `auto` keeps them in RAM only when they fit."""
    from dna_deploy.distill.blockwise import MemoryFeatures, _features_fit_in_ram, feature_source

    space = load_space("tiny")
    teacher = load_teacher(str(tiny_teacher[0]), space)
    source = feature_source(teacher, mnist32, CPU, DistillConfig(), tmp_path, [2], False)
    assert isinstance(source, MemoryFeatures)
    assert [f is not None for f in source.feats] == [False, True, True, False]
    assert _features_fit_in_ram(teacher, mnist32, CPU, [0, 1, 2, 3])
