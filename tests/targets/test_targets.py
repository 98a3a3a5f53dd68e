"""Targets without a network: parsing --target, the resume file (a half-written line is never
taken), the runner run here as a target would run it, and the phone route's command building and
benchmark_model output parsing. The end-to-end adb run needs a phone: skipped with that reason."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dna_deploy.errors import DataError, DnaDeployError
from dna_deploy.targets import LocalTarget, TargetError, parse_target
from dna_deploy.targets.adb import (
    AdbTarget,
    benchmark_command,
    delegate_for,
    elf_machine,
    parse_benchmark_output,
    round_figure_ms,
)
from dna_deploy.targets.base import append_result, read_partial, start_partial
from dna_deploy.targets.ssh import SshTarget

RUNNER = Path(__file__).resolve().parents[2] / "dna_deploy" / "targets" / "runner.py"


def test_parse_target():
    assert isinstance(parse_target(None), LocalTarget) and parse_target("local").is_local
    t = parse_target("ssh://pi@raspberrypi.local:2222?python=/opt/venv/bin/python&dir=/mnt/ssd/dna")
    assert isinstance(t, SshTarget) and (t.user, t.host, t.port) == ("pi", "raspberrypi.local", 2222)
    assert t.python == "/opt/venv/bin/python" and t.remote_dir == "/mnt/ssd/dna" and t.url == "ssh://pi@raspberrypi.local:2222"
    assert parse_target("ssh://jetson").port is None
    assert isinstance(parse_target("adb://R58M123ABC"), AdbTarget) and parse_target("adb://R58M123ABC").serial == "R58M123ABC"
    for bad in ("ftp://x", "ssh://", "ssh://h:99999", "adb://", "ssh://h?color=red"):
        with pytest.raises(DataError):
            parse_target(bad)


def test_the_resume_file_takes_whole_lines_of_this_run_only(tmp_path):
    p = tmp_path / "t.json.target.jsonl"
    start_partial(p, "run-a", keep=False)
    append_result(p, {"key": "op1", "samples": [0.5, 0.4], "probe": 0.7})
    append_result(p, {"key": "op2", "samples": [1.5], "probe": 0.7})
    with open(p, "a") as f:  # killed mid-write: half a line
        f.write('{"key": "op1", "samples": [0.5, 0.')
    done = read_partial(p, "run-a", {"op1", "op2"})
    assert done["op1"] == {"rounds": [[0.5, 0.4]], "probes": [0.7]} and len(done["op2"]["rounds"]) == 1
    with open(p, "a") as f:  # forged or foreign lines: not taken
        f.write("\n" + json.dumps({"key": "op3", "samples": [1.0], "probe": 0.7}) + "\n")
        f.write(json.dumps({"key": "op1", "samples": [-1.0], "probe": 0.7}) + "\n")
    assert read_partial(p, "run-a", {"op1", "op2"})["op1"]["rounds"] == [[0.5, 0.4]]
    assert read_partial(p, "run-b", {"op1", "op2"})["op1"]["rounds"] == []  # another run: started over


def test_the_runner_runs_with_python_and_the_runtime_only(tmp_path):
    """targets/runner.py run as a target runs it (its own process, the file alone in a folder):
    identity, then one ONNX model timed in rounds, one JSON line per round, then done."""
    import numpy as np
    import torch

    from dna_deploy.convert.onnx import torch_to_onnx
    from dna_deploy.io import sha256_file

    work = tmp_path / "target"
    work.mkdir()
    shutil.copy(RUNNER, work / "runner.py")
    model = torch_to_onnx(torch.nn.Conv2d(3, 8, 3).eval(), torch.randn(1, 3, 16, 16), work / "m.onnx")
    r = subprocess.run([sys.executable, "runner.py", "identity", "--dir", "."], cwd=work, capture_output=True, text=True)
    ident = json.loads(r.stdout)
    assert ident["cores"] and ident["versions"]["onnxruntime"] and ident["free_bytes"] > 0
    settings = {"rounds": 3, "runs_per_round": 5, "warmup_s": 0.0, "warmup_runs": 2, "max_extra_rounds": 1,
                "spacing_s": 0.0, "quiet_tolerance": 0.05, "probe_tolerance": 0.15, "cv_threshold": 1e9}
    (work / "jobs.json").write_text(json.dumps({"runtime": "onnxruntime", "threads": 1, "settings": settings,
                                                "models": [{"key": "conv", "file": "m.onnx", "sha256": sha256_file(model),
                                                            "rounds": [[1.0] * 5], "probes": [0.5]}]}))
    r = subprocess.run([sys.executable, "-I", "runner.py", "time", "--dir", ".", "--jobs", "jobs.json"], cwd=work,
                       capture_output=True, text=True)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.returncode == 0 and lines[-1] == {"done": True}, r.stderr
    rounds = [x for x in lines if x.get("key") == "conv"]
    assert 2 <= len(rounds) <= 3 and all(len(x["samples"]) == 5 and x["probe"] > 0 for x in rounds)  # resumed at 1
    model.write_bytes(model.read_bytes()[:100])  # a push cut short: refused, never timed
    r = subprocess.run([sys.executable, "runner.py", "time", "--dir", ".", "--jobs", "jobs.json"], cwd=work,
                       capture_output=True, text=True)
    assert r.returncode == 3 and json.loads(r.stderr)["error"] == "incomplete-file"
    assert np.isfinite(ident["cores"])


# ---------------------------------------------------------------- phones: LiteRT's benchmark_model
# The output format of LiteRT's benchmark tool, as its source prints it:
# tensorflow/lite/tools/benchmark/benchmark_model.cc (BenchmarkModel::Run: "Running benchmark for
# at least N iterations and at least S seconds but terminate if exceeding M seconds." before the
# warm-up and before the timed runs, each followed by the stats line; BenchmarkLoggingListener::
# OnBenchmarkEnd: "Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ...,
# Inference (avg): ...") and tensorflow/core/util/stats_calculator.h (Stat<T>::OutputToStream:
# "count=N first=F curr=C min=m max=M avg=A std=S", or "count=N curr=C" when all values are equal;
# newer builds add " p5=... median=... p95=..."), every figure in microseconds, logged with an
# "INFO: " prefix by tflite's logging (logcat's "I tflite  : " when read from logcat). Older builds
# end with "Average inference timings in us: Warmup: ..., Init: ..., no stats: ...".
NEW_BUILD = """INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/dna-deploy/5f1c0e9a7b2d4c6e8a10.tflite]
INFO: #threads used for CPU inference: [4]
INFO: Loaded model /data/local/tmp/dna-deploy/5f1c0e9a7b2d4c6e8a10.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 0.041312
INFO: Initialized session in 12.407ms.
INFO: Running benchmark for at least 3 iterations and at least 0.25 seconds but terminate if exceeding 150 seconds.
INFO: count=1204 first=612 curr=187 min=179 max=612 avg=203.117 std=31 p5=181 median=196 p95=251

INFO: Running benchmark for at least 20 iterations and at least 0 seconds but terminate if exceeding 150 seconds.
INFO: count=20 first=199 curr=188 min=182 max=240 avg=193.45 std=12 p5=182 median=189 p95=240

INFO: Inference timings in us: Init: 12407, First inference: 612, Warmup (avg): 203.117, Inference (avg): 193.45
INFO: Memory footprint delta from the start of the tool (MB): init=2.1875 overall=3.01562
"""
OLD_BUILD = """STARTING!
Min num runs: [50]
Num threads: [1]
Graph: [/data/local/tmp/dna-deploy/model.tflite]
Loaded model /data/local/tmp/dna-deploy/model.tflite
resolved reporter
Initialized session in 21.039ms
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1 curr=1.29563e+06

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=1.2874e+06 curr=1.28601e+06 min=1.28022e+06 max=1.30011e+06 avg=1.28733e+06 std=4012

Average inference timings in us: Warmup: 1.29563e+06, Init: 21039, no stats: 1.28733e+06
"""
LOGCAT = """07-14 13:14:52.218 22838 22838 I tflite  : Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
07-14 13:14:52.859 22838 22838 I tflite  : count=3 first=2351 curr=2003 min=1994 max=2351 avg=2116.7 std=166 p5=1994 median=2003 p95=2351
07-14 13:14:52.859 22838 22838 I tflite  : Running benchmark for at least 25 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
07-14 13:14:56.520 22838 22838 I tflite  : count=25 curr=1410(all same)
"""


def test_parse_benchmark_output_takes_the_timed_runs():
    s = parse_benchmark_output(NEW_BUILD)
    assert s["count"] == 20 and s["avg_ms"] == pytest.approx(0.19345) and s["median_ms"] == pytest.approx(0.189)
    assert s["min_ms"] == pytest.approx(0.182) and s["p95_ms"] == pytest.approx(0.240) and s["init_ms"] == pytest.approx(12.407)
    assert round_figure_ms(s) == pytest.approx(0.189)  # the median where printed
    old = parse_benchmark_output(OLD_BUILD)  # scientific notation, no percentiles: the mean
    assert old["count"] == 50 and old["avg_ms"] == pytest.approx(1287.33) and "median_ms" not in old
    assert round_figure_ms(old) == pytest.approx(1287.33) and old["init_ms"] == pytest.approx(21.039)
    same = parse_benchmark_output(LOGCAT)  # logcat prefixes; all runs equal
    assert same["count"] == 25 and same["min_ms"] == same["avg_ms"] == pytest.approx(1.41)


def test_parse_benchmark_output_says_what_failed():
    warmup_only = NEW_BUILD.split("INFO: Running benchmark for at least 20")[0]
    with pytest.raises(TargetError, match="no statistics"):
        parse_benchmark_output(warmup_only)  # the phone went away during the timed runs
    with pytest.raises(TargetError, match="Failed to apply GPU delegate"):
        parse_benchmark_output("INFO: STARTING!\nERROR: Failed to apply GPU delegate.\nERROR: Benchmarking failed.\n")


def test_benchmark_command_carries_threads_mask_and_delegate():
    cmd = benchmark_command("/data/local/tmp/dna-deploy/benchmark_model", "/data/local/tmp/dna-deploy/m.tflite",
                            threads=4, cpu_mask="f0", delegate="xnnpack", runs=20, warmup_runs=3, warmup_s=0.25)
    assert cmd.startswith("taskset f0 /data/local/tmp/dna-deploy/benchmark_model --graph=/data/local/tmp/dna-deploy/m.tflite")
    assert "--num_threads=4" in cmd and "--num_runs=20" in cmd and "--warmup_runs=3" in cmd
    assert "--warmup_min_secs=0.25" in cmd and "--use_xnnpack=true" in cmd and "--min_secs=0" in cmd
    no_mask = benchmark_command("b", "m", threads=1, delegate=delegate_for("gpu", None))
    assert not no_mask.startswith("taskset") and "--use_gpu=true" in no_mask
    assert "--use_xnnpack=false" in benchmark_command("b", "m", threads=1, delegate=delegate_for("cpu", "builtin"))
    assert "--use_nnapi=true" in benchmark_command("b", "m", threads=1, delegate="nnapi")
    with pytest.raises(DataError, match="hexadecimal"):
        benchmark_command("b", "m", threads=1, cpu_mask="big cores")
    with pytest.raises(DataError, match="delegate"):
        benchmark_command("b", "m", threads=1, delegate="hexagon-dsp")


def test_a_binary_of_another_architecture_is_named(tmp_path):
    here = elf_machine(Path(sys.executable).resolve())
    assert here in (62, 183)  # this interpreter: x86-64 or arm64
    assert elf_machine(RUNNER) is None
    phone = AdbTarget("R58M123ABC", benchmark_binary=Path(sys.executable).resolve())
    phone._identity = {"machine": "aarch64" if here == 62 else "x86_64", "versions": {}}  # as read from the phone
    with pytest.raises(TargetError, match="binary; phone R58M123ABC is"):
        phone.check_binary()
    with pytest.raises(DnaDeployError, match="--benchmark-binary"):
        AdbTarget("R58M123ABC").check_binary()


def test_adb_errors_without_a_phone():
    phone = AdbTarget("NO-SUCH-PHONE-0")
    if shutil.which("adb") is None:
        with pytest.raises(TargetError, match="adb is not installed"):
            phone.identity()
        return
    with pytest.raises(TargetError, match="no phone NO-SUCH-PHONE-0|offline|not authorised"):
        phone._adb("get-state", timeout=60)


def test_profile_on_a_phone_end_to_end():
    """Needs a phone with USB debugging on and LiteRT's benchmark_model for it."""
    reason = "no Android phone was available to this test (adb devices lists none): the adb route's end-to-end run is untested"
    if shutil.which("adb") is None:
        reason = "adb is not installed (apt-get install adb), and no phone was available"
    else:
        listed = subprocess.run(["adb", "devices"], capture_output=True, text=True, timeout=60).stdout.splitlines()[1:]
        if any(line.strip().endswith("\tdevice") for line in listed):
            reason = "a phone is connected, but this test does not know its benchmark_model binary; run it by hand (docs/targets.md)"
    print(f"SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def test_a_pipeline_device_may_name_its_target(tmp_path):
    """target: on a device entry: checked when the file is read; the tables stage's commands and
    the verify stage's groups carry it (a folder of that device's runtime is timed there)."""
    from types import SimpleNamespace

    from dna_deploy.pipeline.config import load_pipeline
    from dna_deploy.pipeline.stages import TablesStage, VerifyStage

    text = (Path(__file__).resolve().parents[1] / "pipeline" / "smoke.yaml").read_text()
    board = "ssh://pi@raspberrypi.local:2222"
    mine = text.replace("  - device: x86-cpu-onnxruntime\n    budget_fraction: 0.5\n",
                        "  - device: x86-cpu-onnxruntime\n    budget_fraction: 0.5\n"
                        f"  - device: rpi5-cpu-litert\n    budget_ms: 5.0\n    target: {board}\n")
    mine = mine.replace("  - {to: onnx}\n", "  - {to: onnx}\n  - {to: tflite}\n")
    (tmp_path / "p.yaml").write_text(mine)
    cfg = load_pipeline(tmp_path / "p.yaml")
    assert [d.target for d in cfg.devices] == [None, board]
    ctx = SimpleNamespace(cfg=cfg, out=tmp_path, space=SimpleNamespace(name="tiny"), budgets=lambda: [None, 5.0],
                          device_name=lambda d: d.device, table_path=lambda name: tmp_path / f"{name}.json")
    assert VerifyStage.groups(ctx) == [(None, [0]), (board, [1])]
    cmds = VerifyStage().commands(ctx)
    assert "--target" not in cmds[0] and cmds[1][-2:] == ["--target", board]
    assert [c[-2:] for c in TablesStage().commands(ctx)[2:]] == [["--target", board]] * 2
    (tmp_path / "bad.yaml").write_text(mine.replace(board, "ftp://pi@raspberrypi.local"))
    with pytest.raises(DataError, match="ftp://"):
        load_pipeline(tmp_path / "bad.yaml")
