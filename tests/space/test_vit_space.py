"""The transformer family: grammar, counts, validation, supernet extraction, and MBConv fingerprints
left as they were."""

import math

import pytest
import torch

from dna_deploy.errors import ArchError, SpaceError
from dna_deploy.nn.builder import build_network, describe_rows
from dna_deploy.nn.supernet import Supernet
from dna_deploy.space import Arch, SearchSpace, load_space


@pytest.fixture
def vit():
    return load_space("vit-tiny")


def test_counts_and_round_trip(vit, rng):
    # 9 choices, 2 layers, skip on the second: 9 + 81 canonical candidates per block
    assert [vit.block_candidate_count(b) for b in range(3)] == [90, 90, 90]
    assert vit.count_architectures() == 90 ** 3
    small = load_space("vit-small")
    assert small.block_candidate_count(0) == 9 + 81 + 729
    assert small.count_architectures() == 819 ** 4
    for _ in range(30):
        a = vit.sample(rng, canonical=False)
        assert vit.parse_arch(str(a)) == a and Arch.from_json(a.to_json(vit), vit) == a
    assert str(vit.largest_arch()) == "r4h6.r4h6|r4h6.r4h6|r4h6.r4h6"
    assert str(vit.smallest_arch()) == "r2h3.skip|r2h3.skip|r2h3.skip"


@pytest.mark.parametrize("text, fragment", [
    ("k3e6.r2h3|r2h3.skip|r2h3.skip", "'k3e6' at block 0 layer 0 is not allowed; choices there: r2h3"),
    ("r2h5.r2h3|r2h3.skip|r2h3.skip", "'r2h5'"),
    ("r2h3|r2h3.skip|r2h3.skip", "block 0 has 1 layers"),
])
def test_bad_arch_strings(vit, text, fragment):
    with pytest.raises(ArchError, match=fragment):
        vit.parse_arch(text)


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["blocks"][0].update(choices=["r2h5"]), "5 heads do not divide width 48"),
    (lambda d: d["blocks"][0].update(choices=["k3e6"]), "not a vit op"),
    (lambda d: d.update(activation="swish"), "use activation 'gelu'"),
    (lambda d: d.update(input_size=30), "not a multiple of the patch size"),
    (lambda d: d.update(family="rnn"), "family 'rnn'"),
])
def test_bad_space_definitions(vit, mutate, fragment):
    d = vit.to_dict()
    mutate(d)
    with pytest.raises(SpaceError, match=fragment):
        SearchSpace.from_dict(d)


def test_a_space_file_defaults_to_transformer_choices(tmp_path):
    import yaml

    p = tmp_path / "v.yaml"
    p.write_text(yaml.safe_dump({"name": "v", "family": "vit", "input_size": 32, "num_classes": 10,
                                 "stem_channels": 48, "stem_stride": 4,
                                 "blocks": [{"out_channels": 48, "stride": 1, "layers": 2},
                                            {"out_channels": 96, "stride": 2, "layers": 1}]}))
    s = load_space(p)
    assert s.activation == "gelu" and len(s.blocks[0].choices) == 9 and s.resolution_at(2) == 4


def test_mbconv_fingerprints_are_unchanged():
    """Adding the family field must not orphan tables and checkpoints made before it."""
    assert load_space("tiny").fingerprint == "5cdebab4786b684a"
    assert load_space("vit-tiny").fingerprint != load_space("tiny").fingerprint


def test_layer_keys_and_describe(vit, rng):
    keys = {s.key for s in vit.all_layer_specs()}
    assert "vit-in:8x8x48-out:4x4x96-h6-r4-s2-gelu" in keys  # the patch-merging first layer of block 1
    assert "vit-in:4x4x96-out:4x4x144-h4-r3-s1-gelu" in keys  # a width change without merging tokens
    for _ in range(20):
        arch = vit.sample(rng)
        assert {s.key for s in vit.layer_specs(arch) if s.key} <= keys
    rows = describe_rows(vit, vit.parse_arch("r4h3.r4h3|r2h3.skip|r4h6.r4h4"))
    assert [r["op"] for r in rows] == ["patch4x4", "r4h3", "r4h3", "r2h3", "skip", "r4h6", "r4h4", "head"]
    assert rows[-1]["out"] == "10" and rows[3]["out"] == "4x4x96"


def test_supernet_path_equals_the_extracted_network(vit, rng):
    torch.manual_seed(0)
    sup = Supernet(vit).eval()
    x = torch.randn(2, 3, 32, 32)
    for _ in range(3):
        arch = vit.sample(rng)
        net = sup.extract(arch).eval()
        with torch.no_grad():
            assert torch.allclose(sup(x, arch), net(x), atol=1e-6)
            feats = net.forward_features(x)
        assert [tuple(f.shape) for f in feats] == [(2, 48, 8, 8), (2, 96, 4, 4), (2, 144, 4, 4)]
    assert math.isclose(sum(p.numel() for p in build_network(vit, vit.largest_arch()).parameters()),
                        sum(s.params for s in vit.layer_specs(vit.largest_arch())))


def test_vit_small_profiles_on_onnxruntime(tmp_path):
    """vit-small at 224 px: eleven distinct layers (patch, nine transformer layers, head), timed for
    real (few runs), and a network predicted from them."""
    from typer.testing import CliRunner

    from dna_deploy.cli.app import app

    runner = CliRunner()
    table = tmp_path / "t.json"
    r = runner.invoke(app, ["profile", "-d", "x86-cpu-onnxruntime", "-s", "vit-small", "-o", str(table),
                            "--rounds", "1", "--runs", "3", "--warmup-s", "0", "-f", "json"])
    assert r.exit_code == 0, r.output[-2000:]
    import json

    entries = json.loads(table.read_text())["entries"]
    assert len(entries) == 11 and all(e["median_ms"] > 0 for e in entries.values())
    arch = "r4h6.r4h6.r4h6|r2h3.skip.skip|r3h4.r3h4.skip|r2h6.r2h6.r2h6"
    r = runner.invoke(app, ["profile", "predict", "-t", str(table), "-s", "vit-small", arch, "-f", "json"])
    assert r.exit_code == 0, r.output[-2000:]
    pred = json.loads(r.output[r.output.index("["):]) if r.output.lstrip().startswith("[") else json.loads(r.output)
    text = json.dumps(pred)
    assert "raw_sum_ms" in text or "predicted_ms" in text


def test_more_fingerprints_are_pinned():
    assert load_space("dna-mbconv").fingerprint == "84d7ac1a9bc5f465"
    assert load_space("tiny").body_fingerprint == "662007253d95dde1"
    assert "family" not in load_space("tiny").to_dict() and load_space("vit-tiny").to_dict()["family"] == "vit"
