"""Transformer layers and a whole network on the stock LiteRT interpreter (no Flex delegate) and on
ONNX Runtime, against PyTorch; int8 end to end."""

import numpy as np
import pytest
import torch

from dna_deploy.nn.builder import build_network
from dna_deploy.nn.modules import build_layer
from dna_deploy.runtimes import runner_class
from dna_deploy.space import load_space


def _skip_without(name):
    reason = runner_class(name).unavailable_reason("cpu")
    if reason:
        pytest.skip(f"{name}: {reason}")


def _layer_models():
    """One model per transformer layer kind of vit-tiny: patch embedding, plain layer, patch-merging
    layer, width-changing layer, head."""
    space = load_space("vit-tiny")
    specs = space.all_layer_specs()
    pick = {
        "patch": next(s for s in specs if s.kind == "patch"),
        "vit": next(s for s in specs if s.kind == "vit" and not s.merges),
        "vit-merge": next(s for s in specs if s.kind == "vit" and s.stride == 2),
        "vit-width": next(s for s in specs if s.kind == "vit" and s.merges and s.stride == 1),
        "vithead": next(s for s in specs if s.kind == "vithead"),
    }
    return {name: spec for name, spec in pick.items()}


def _as_reference_layout(y, ref):
    """onnx2tf gives a conv's output in NHWC but a transformer layer's in ONNX's own NCHW (the token
    permutes undo its layout change); the runner assumes NHWC for 4-D outputs, so undo it where the
    model was NCHW already. Only per-layer models have 4-D outputs; networks give logits."""
    if y.shape != ref.shape and y.ndim == 4:
        y = y.transpose(0, 2, 3, 1).reshape(ref.shape)
    return y


@pytest.mark.parametrize("kind", ["patch", "vit", "vit-merge", "vit-width", "vithead"])
def test_every_layer_kind_runs_on_the_stock_litert_interpreter(kind, tmp_path):
    _skip_without("litert")
    spec = _layer_models()[kind]
    torch.manual_seed(0)
    module = build_layer(spec).eval()
    x = torch.randn(1, spec.in_ch, spec.in_hw, spec.in_hw)
    with torch.no_grad():
        ref = module(x).numpy()
    for runtime in ("onnxruntime", "litert"):
        cls = runner_class(runtime)
        artifact = cls.prepare_artifact(module, x, tmp_path, name=f"{kind}_{runtime}")
        with cls(artifact) as runner:  # the LiteRT runner uses the stock interpreter, no Flex delegate
            y = _as_reference_layout(runner.infer(x.numpy()), ref)
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), runtime


def test_a_whole_network_in_fp32_and_int8(tmp_path):
    """fp32 matches PyTorch; full-integer int8 (per-channel weights, int8 I/O) loads on the stock
    interpreter and stays close to it."""
    _skip_without("litert")
    from dna_deploy.convert.litert import onnx_to_litert
    from dna_deploy.convert.onnx import torch_to_onnx

    space = load_space("vit-tiny")
    torch.manual_seed(0)
    net = build_network(space, "r4h6.r2h3|r3h4.skip|r2h6.r4h4").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = net(x).numpy()
    onnx_path = torch_to_onnx(net, x[:1], tmp_path / "net.onnx")
    calib = torch.randn(16, 3, 32, 32).numpy()
    out = onnx_to_litert(onnx_path, tmp_path, precisions=("fp32", "int8"), calibration=calib)
    cls = runner_class("litert")
    with cls(out["fp32"]) as fp32, cls(out["int8"]) as int8:
        y32 = np.concatenate([fp32.infer(x[i:i + 1].numpy()) for i in range(4)])
        y8 = np.concatenate([int8.infer(x[i:i + 1].numpy()) for i in range(4)])
    assert np.abs(y32 - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    spread = ref.max() - ref.min()
    assert np.abs(y8 - ref).max() < 0.1 * spread  # quantisation error, not a broken graph
    assert (y8.argmax(1) == ref.argmax(1)).mean() >= 0.75
