"""One contract over every registered runtime: same op, same input, PyTorch's answer, real timings."""

import time

import numpy as np
import pytest
import torch

from dna_deploy.errors import DnaDeployError
from dna_deploy.nn.modules import build_layer
from dna_deploy.runtimes import RUNTIME_NAMES, runner_class
from dna_deploy.runtimes.base import TimingStats, measure


def _skip_if_unavailable(name, device):
    reason = runner_class(name).unavailable_reason(device)
    if reason:
        pytest.skip(f"{name} on {device}: {reason}")


def _strided_mbconv(space):
    """A one-op model (the space's first strided MBConv), an input, and PyTorch's output."""
    spec = [s for s in space.all_layer_specs() if s.kind == "mbconv" and s.stride == 2][0]
    torch.manual_seed(0)
    module = build_layer(spec).eval()
    x = torch.randn(1, spec.in_ch, spec.in_hw, spec.in_hw)
    with torch.no_grad():
        return module, x, module(x).numpy()


@pytest.mark.parametrize("name, device", [(n, "cpu") for n in RUNTIME_NAMES if n != "tensorrt"]
                         + [("tensorrt", "cuda"), ("torch", "cuda"), ("onnxruntime", "cuda")])
def test_runtime_contract(name, device, tiny, tmp_path):
    _skip_if_unavailable(name, device)
    module, x, ref = _strided_mbconv(tiny)
    cls = runner_class(name)
    artifact = cls.prepare_artifact(module, x, tmp_path, name="op")
    with cls(artifact, device=device, input_shape=tuple(x.shape)) as runner:
        y = runner.infer(x.numpy())
        stats = measure(runner, x.numpy(), warmup=2, runs=7)
        with pytest.raises(DnaDeployError, match="input shape"):
            runner.infer(np.zeros((1, 3, 5, 5), np.float32))
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    assert stats.runs == 7 and 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert not runner.is_active


def test_timing_stats():
    s = TimingStats.from_samples([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.median_ms == 3.0 and s.runs == 5 and s.p90_ms > s.median_ms
    with pytest.raises(ValueError):
        TimingStats.from_samples([])


def test_rounds_slowed_by_the_machine_are_left_out():
    """A shared machine slows for seconds at a time (1.6x here): a round measured then is dropped,
    however many runs it has; rounds within 5 % of the fastest are pooled; one fast round alone is
    not yet confirmed."""
    from dna_deploy.runtimes.base import confirmed, quiet_rounds, quiet_stats

    rng = np.random.default_rng(0)
    fast = [list(0.45 * (1 + 0.01 * rng.random(15))) for _ in range(2)]
    slow = [list(0.72 * (1 + 0.01 * rng.random(15))) for _ in range(3)]
    rounds = [slow[0], fast[0], slow[1], slow[2], fast[1]]
    assert quiet_rounds(rounds) == fast and confirmed(rounds)
    stats = quiet_stats(rounds)
    assert stats.runs == 30 and 0.45 <= stats.p10_ms <= stats.median_ms <= stats.p90_ms <= 0.455
    pooled = TimingStats.from_samples([v for r in rounds for v in r])
    assert pooled.median_ms > 0.7  # what pooling all five rounds would have reported
    assert not confirmed([slow[0], fast[0], slow[1]]) and not confirmed([fast[0]])
    jitter = [list(0.45 * (1 + 0.02 * i) * np.ones(5)) for i in range(3)]  # a quiet machine: all kept
    assert quiet_rounds(jitter) == jitter


def test_rounds_in_one_slow_phase_do_not_confirm_each_other():
    """Two rounds timed while the whole machine ran slow agree with each other; their speed probes
    (a fixed Python loop, 1.7x its fastest) say the machine was slow, so they confirm nothing until
    a quiet round backs a quiet one."""
    from dna_deploy.runtimes.base import SpeedProbe, confirmed

    speed = SpeedProbe(fastest_ms=1.0)
    slow = [[0.77, 0.78, 0.80], [0.78, 0.79, 0.80]]
    assert confirmed(slow) and not confirmed(slow, [1.7, 1.7], speed)
    fast = [[0.45, 0.46], [0.46, 0.46]]
    assert confirmed(slow + fast, [1.7, 1.7, 1.05, 1.1], speed)
    assert not confirmed(slow + fast, [1.7, 1.7, 1.05, 1.2], speed)  # the second fast round's probe was slow
    probe = SpeedProbe()
    first, second = probe.measure(), probe.measure()
    assert probe.fastest_ms == min(first, second) > 0  # the real loop: milliseconds, the fastest kept
    assert probe.quiet(probe.fastest_ms * 1.14) and not probe.quiet(probe.fastest_ms * 1.16)
    assert SpeedProbe.resumed({"a": [2.0, 1.5], "b": [1.2]}).fastest_ms == 1.2


def test_a_round_probes_the_machine_around_its_timed_runs(tmp_path):
    """time_round warms up, probes, times its runs, probes again, and reports the slower probe."""
    from dna_deploy.runtimes.base import SpeedProbe
    from dna_deploy.runtimes.onnxruntime import OnnxRuntimeRunner

    class ScriptedProbe(SpeedProbe):  # the real loop's figures are the machine's; these are known
        def __init__(self, figures):
            super().__init__()
            self.figures, self.at = list(figures), []

        def measure(self):
            self.at.append(time.perf_counter())
            ms = self.figures.pop(0)
            self.fastest_ms = min(self.fastest_ms, ms)
            return ms

    model = OnnxRuntimeRunner.prepare_artifact(torch.nn.Conv2d(1, 4, 3).eval(), torch.randn(1, 1, 8, 8), tmp_path,
                                               name="conv")
    speed = ScriptedProbe([1.0, 2.0])
    with OnnxRuntimeRunner(model) as runner:
        start = time.perf_counter()
        samples, probe = runner.time_round(np.zeros((1, 1, 8, 8), np.float32), speed, runs=7, warmup_s=0.05)
    assert len(samples) == 7 and all(s > 0 for s in samples)
    assert probe == 2.0 and speed.fastest_ms == 1.0  # the slower of the two; the fastest remembered
    before, after = speed.at
    assert before - start >= 0.05  # probed after the warm-up ...
    assert 1e3 * (after - before) >= sum(samples)  # ... and the timed runs lie between the probes


def test_unknown_runtime_names_choices():
    with pytest.raises(DnaDeployError, match="did you mean 'onnxruntime'"):
        runner_class("onnxruntim")


@pytest.mark.parametrize("resolver", ["xnnpack", "builtin"])
def test_litert_kernel_sets_give_the_same_outputs(tiny, tmp_path, resolver):
    """The op resolver is part of the device (like threads): every kernel set runs the same graph."""
    _skip_if_unavailable("litert", "cpu")
    module, x, ref = _strided_mbconv(tiny)
    cls = runner_class("litert")
    artifact = cls.prepare_artifact(module, x, tmp_path, name="op")
    with cls(artifact, op_resolver=resolver) as runner:
        assert np.allclose(runner.infer(x.numpy()), ref, atol=1e-4)


def test_op_resolver_is_checked_against_the_runtime():
    from dna_deploy.errors import DataError
    from dna_deploy.latency.devices import DeviceSpec

    with pytest.raises(DataError, match="onnxruntime has only its default"):
        DeviceSpec.from_dict({"name": "x", "runtime": "onnxruntime", "op_resolver": "builtin"})
    with pytest.raises(DataError, match="choose xnnpack, builtin, reference"):
        DeviceSpec.from_dict({"name": "x", "runtime": "litert", "op_resolver": "fast"})
    spec = DeviceSpec.from_dict({"name": "x", "runtime": "litert", "op_resolver": "builtin"})
    assert spec.to_dict()["op_resolver"] == "builtin"
    assert "op_resolver" not in DeviceSpec.from_dict({"name": "y", "runtime": "litert"}).to_dict()


def test_training_after_a_litert_conversion_does_not_crash():
    """TensorFlow loaded first used to make torch's first optimizer (which imports triton) segfault:
    a teacher-free pipeline profiles LiteRT before it trains."""
    import subprocess
    import sys

    _skip_if_unavailable("litert", "cpu")
    code = ("from dna_deploy.convert.litert import require_onnx2tf; require_onnx2tf(); import torch; "
            "torch.optim.Adam(torch.nn.Linear(2, 2).parameters()); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-1500:]


def _tflite_graph(path):
    """What makes a .tflite the graph it is: its ops, its tensors (shape, type, quantisation) and
    its output on a fixed input. Not the tensor names, which Keras numbers anew on every conversion."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    ops = sorted(o["op_name"] for o in it._get_ops_details())
    tensors = sorted((tuple(int(v) for v in t["shape"]), str(t["dtype"]), tuple(float(q) for q in t["quantization"]),
                      tuple(float(q) for q in t["quantization_parameters"]["scales"]),  # per channel
                      tuple(int(z) for z in t["quantization_parameters"]["zero_points"]))
                     for t in it.get_tensor_details())
    inp = it.get_input_details()[0]
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(inp["shape"]) if inp["dtype"] == np.float32 else rng.integers(-60, 60, inp["shape"]))
    it.set_tensor(inp["index"], x.astype(inp["dtype"]))
    it.invoke()
    return ops, tensors, it.get_tensor(it.get_output_details()[0]["index"])


def test_litert_conversion_skips_only_the_variants_not_asked_for(tiny, tmp_path):
    """onnx2tf runs seven TFLite conversions for an int8 request; we keep one. Skipping the rest
    must leave the kept graphs as onnx2tf makes them when it runs all seven."""
    import contextlib

    from dna_deploy.convert import litert
    from dna_deploy.convert.onnx import torch_to_onnx

    _skip_if_unavailable("litert", "cpu")
    module, x, _ = _strided_mbconv(tiny)
    onnx_path = torch_to_onnx(module, x, tmp_path / "op.onnx")
    calibration = np.random.default_rng(0).standard_normal((8, *x.shape[1:])).astype(np.float32)
    precisions = ("fp32", "fp16", "int8")
    skipped = litert.onnx_to_litert(onnx_path, tmp_path / "skip", precisions=precisions, calibration=calibration)
    only_variants, litert._only_variants = litert._only_variants, lambda precisions: contextlib.nullcontext()
    try:
        everything = litert.onnx_to_litert(onnx_path, tmp_path / "all", precisions=precisions, calibration=calibration)
    finally:
        litert._only_variants = only_variants
    for p in precisions:
        (ops_a, tensors_a, y_a), (ops_b, tensors_b, y_b) = _tflite_graph(skipped[p]), _tflite_graph(everything[p])
        assert ops_a == ops_b and tensors_a == tensors_b, p
        assert np.array_equal(y_a, y_b), p
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=str(skipped["int8"])).get_input_details()[0]["dtype"] == np.int8  # full integer


@pytest.mark.parametrize("space_name,precision", [("tiny", "fp32"), ("tiny", "int8"), ("vit-tiny", "int8")])
def test_litert_timing_conversion_makes_the_deployed_graph(space_name, precision, tmp_path):
    """Profiling and validation convert thousands of models with for_timing (no strict-mode
    correction, no int8 SavedModel round trip, no throw-away layers in the binary ops). What they time must be what `export` ships: the
    same ops, tensors, per-channel quantisation and outputs, on a whole CNN and a whole ViT
    (attention's reshapes and matmuls are where strict mode would pick a transposition). And
    nothing the timing path patches stays patched."""
    import importlib
    import random

    from dna_deploy.convert.litert import _BINARY_OPS, onnx_to_litert, require_onnx2tf
    from dna_deploy.convert.onnx import torch_to_onnx
    from dna_deploy.nn.builder import build_network
    from dna_deploy.nn.rewrite import litert_graph
    from dna_deploy.space import load_space

    _skip_if_unavailable("litert", "cpu")
    require_onnx2tf()  # TensorFlow imported before torch's compiler stack crashes it (see there)
    import tensorflow as tf
    import tf_keras

    space = load_space(space_name)
    torch.manual_seed(0)
    arch = space.sample(random.Random(3))
    x = torch.randn(1, space.in_channels, space.input_size, space.input_size)
    onnx_path = torch_to_onnx(litert_graph(build_network(space, arch).eval()), x, tmp_path / "net.onnx")
    calibration = np.random.default_rng(0).standard_normal((8, *x.shape[1:])).astype(np.float32)
    def patchable():
        return (dict(vars(tf.lite.TFLiteConverter)), tf.saved_model.load, tf.saved_model.save,
                tf_keras.export.ExportArchive.write_out,
                [importlib.import_module(f"onnx2tf.ops.{op}").tf for op in _BINARY_OPS])

    patched = patchable()
    shipped, timed = (onnx_to_litert(onnx_path, tmp_path / sub, precisions=(precision,), calibration=calibration,
                                     for_timing=sub == "timed")[precision] for sub in ("shipped", "timed"))
    assert patched == patchable() and patched[-1] == [tf] * len(_BINARY_OPS)
    (ops_a, tensors_a, y_a), (ops_b, tensors_b, y_b) = _tflite_graph(shipped), _tflite_graph(timed)
    assert len(ops_a) > 10 and ops_a == ops_b
    assert tensors_a == tensors_b
    if precision == "int8":
        assert any(len(t[3]) > 1 for t in tensors_a)  # per-channel weights are compared
    assert np.array_equal(y_a, y_b)
