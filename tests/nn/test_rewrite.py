"""Large depthwise convolutions split for LiteRT (nn/rewrite.py): the same function, no kernel over
5x5 left, and the LiteRT artifact built that way still matches PyTorch."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn as nn

from dna_deploy.nn.builder import build_network
from dna_deploy.nn.modules import ConvBnAct, build_layer
from dna_deploy.nn.rewrite import SplitDepthwise, is_large_depthwise, split_large_depthwise
from dna_deploy.runtimes import runner_class
from dna_deploy.space import load_space


def _randomise_bn(model: nn.Module) -> None:
    """Trained-looking BatchNorm statistics, so that folding them is actually tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.mark.parametrize("kernel", [7, 9])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [15, 16])
def test_split_depthwise_equals_conv_then_batchnorm(kernel, stride, size):
    torch.manual_seed(0)
    block = ConvBnAct(12, 12, kernel, stride, groups=12, act=None).eval()
    _randomise_bn(block)
    split = SplitDepthwise(block[0], block[1]).eval()
    x = torch.randn(2, 12, size, size)
    with torch.no_grad():
        ref, y = block(x), split(x)
    assert y.shape == ref.shape
    assert torch.allclose(y, ref, atol=1e-5, rtol=1e-5)
    taps = [m.kernel_size[0] * m.kernel_size[1] for m in split.modules() if isinstance(m, nn.Conv2d)]
    assert max(taps) <= 25 and sum(taps) == kernel * kernel  # the same products, none dropped


def test_a_network_with_7x7_kernels_keeps_its_outputs_and_the_original_is_untouched():
    space = load_space("tiny")
    torch.manual_seed(0)
    net = build_network(space, "k7e6.skip|k5e3.k7e3.skip|k3e3.k5e6.k7e6|k7e3.k7e6").eval()
    _randomise_bn(net)
    split = split_large_depthwise(net)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(split(x), net(x), atol=1e-4, rtol=1e-4)
    assert not any(is_large_depthwise(m) for m in split.modules())
    assert sum(is_large_depthwise(m) for m in net.modules()) == 5  # the copy was rewritten, not the network
    small = build_network(space, "k3e3.skip|k5e3.k3e3.skip|k3e3.k5e6.k3e6|k5e3.k3e6")
    assert split_large_depthwise(small) is small


def _depthwise_kernels(artifact) -> list[tuple[int, int]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(artifact))
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    return [tuple(tensors[op["inputs"][1]]["shape"][1:3]) for op in it._get_ops_details()
            if op["op_name"] == "DEPTHWISE_CONV_2D"]


@pytest.mark.parametrize("op_resolver", [None, "builtin"])
def test_litert_op_models_are_shaped_for_their_kernels_and_match_pytorch(tmp_path, op_resolver):
    """The LiteRT path (profiling and export) converts the split graph for XNNPACK (the default):
    no 7x7 depthwise kernel reaches it. LiteRT's builtin kernels get the 7x7 as trained. Either
    way the layer computes what PyTorch does."""
    cls = runner_class("litert")
    reason = cls.unavailable_reason("cpu")
    if reason or importlib.util.find_spec("onnx2tf") is None:
        pytest.skip(f"litert: {reason or 'onnx2tf not installed'}")
    space = load_space("tiny")
    spec = next(s for s in space.all_layer_specs() if s.kind == "mbconv" and s.kernel == 7 and s.stride == 2)
    torch.manual_seed(0)
    layer = build_layer(spec).eval()
    _randomise_bn(layer)
    x = torch.randn(1, spec.in_ch, spec.in_hw, spec.in_hw)
    with torch.no_grad():
        ref = layer(x).numpy()
    artifact = cls.prepare_artifact(layer, x, tmp_path, name="k7", op_resolver=op_resolver)
    kernels = _depthwise_kernels(artifact)
    if op_resolver is None:
        assert kernels and max(h * w for h, w in kernels) <= 25, kernels
    else:
        assert kernels == [(7, 7)]
    with cls(artifact, op_resolver=op_resolver) as runner:
        y = runner.infer(x.numpy())
    y = y.transpose(0, 3, 1, 2) if y.shape != ref.shape else y
    assert np.abs(y - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("bn", [nn.BatchNorm2d(12, affine=False), nn.BatchNorm2d(12, track_running_stats=False)])
def test_batchnorm_without_weights_is_folded_and_one_without_running_statistics_is_kept(bn):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(12, 12, 7, 2, 3, groups=12), bn).eval()
    if bn.track_running_stats:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    split = split_large_depthwise(model)
    x = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        assert torch.allclose(split(x), model(x), atol=1e-5)
    kept = [m for m in split.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(kept) == (0 if bn.track_running_stats else 1)  # batch statistics cannot become weights


def test_split_depthwise_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError):
        SplitDepthwise(nn.Conv2d(12, 12, 7, padding=1, groups=12))  # not 'same' padding
    with pytest.raises(ValueError):
        SplitDepthwise(nn.Conv2d(12, 24, 7, padding=3))  # not depthwise
