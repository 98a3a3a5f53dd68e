import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dna_deploy.nn.builder import build_network, network_costs


@pytest.mark.parametrize("space_name, n", [("tiny", 6), ("dna-mbconv", 2), ("vit-tiny", 6), ("vit-small", 1)])
def test_forward_shapes_and_costs_match_torch_counters(space_name, n, rng):
    from dna_deploy.space import load_space

    space = load_space(space_name)
    archs = [space.sample(rng) for _ in range(n)] + [space.smallest_arch(), space.largest_arch()]
    for arch in archs:
        net = build_network(space, arch).eval()
        x = torch.randn(2, 3, space.input_size, space.input_size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            y = net(x)
        with torch.no_grad():
            feats = net.forward_features(x)
        assert y.shape == (2, space.num_classes)
        for i, f in enumerate(feats):
            hw = space.resolution_at(i + 1)
            assert f.shape == (2, space.blocks[i].out_channels, hw, hw)
        costs = network_costs(space, arch)
        assert costs["macs"] == counter.get_total_flops() // 4  # 2 images x 2 FLOPs per MAC
        assert costs["params"] == sum(p.numel() for p in net.parameters())


def test_skip_placement_builds_the_same_network(tiny):
    a = tiny.parse_arch("k3e6.skip|k5e3.skip.k7e6|k3e3.k3e3.skip|k5e6.skip")
    b = a.canonical()
    assert str(b) == "k3e6.skip|k5e3.k7e6.skip|k3e3.k3e3.skip|k5e6.skip"
    assert network_costs(tiny, a)["macs"] == network_costs(tiny, b)["macs"]
    na, nb = build_network(tiny, a).eval(), build_network(tiny, b).eval()
    # copy weights by layer order (skips hold none)
    src = [m for blk in na.blocks for m in blk if not isinstance(m, torch.nn.Identity)]
    dst = [m for blk in nb.blocks for m in blk if not isinstance(m, torch.nn.Identity)]
    for s, d in zip(src, dst):
        d.load_state_dict(s.state_dict())
    nb.stem.load_state_dict(na.stem.state_dict())
    nb.head.load_state_dict(na.head.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(na(x), nb(x))
