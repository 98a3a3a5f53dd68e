"""One contract over every registered runtime: same op, same input, PyTorch's answer, real timings."""

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
