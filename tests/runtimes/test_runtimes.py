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


@pytest.mark.parametrize("name, device", [(n, "cpu") for n in RUNTIME_NAMES if n != "tensorrt"]
                         + [("tensorrt", "cuda"), ("torch", "cuda"), ("onnxruntime", "cuda")])
def test_runtime_contract(name, device, tiny, tmp_path):
    _skip_if_unavailable(name, device)
    spec = [s for s in tiny.all_layer_specs() if s.kind == "mbconv" and s.stride == 2][0]
    torch.manual_seed(0)
    module = build_layer(spec).eval()
    x = torch.randn(1, spec.in_ch, spec.in_hw, spec.in_hw)
    with torch.no_grad():
        ref = module(x).numpy()
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
