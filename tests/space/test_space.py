import itertools
import math

import pytest

from dna_deploy.errors import ArchError, SpaceError
from dna_deploy.space import Arch, load_space


def test_dna_mbconv_exact_counts(mbconv):
    # per block: sum_{d=1..n} 6^d canonical candidates; 6^n x 7^(n-1) encodings
    per_block = [42, 1554, 1554, 1554, 1554, 6]
    assert [mbconv.block_candidate_count(i) for i in range(6)] == per_block
    assert mbconv.count_architectures() == math.prod(per_block) == 1_469_618_460_338_112
    assert mbconv.count_architectures(distinct=False) == 42 * (6 * 7**3) ** 4 * 6


def test_candidate_enumeration_matches_count_and_is_distinct(tiny):
    for b in range(len(tiny.blocks)):
        cands = tiny.block_candidates(b)
        assert len(cands) == tiny.block_candidate_count(b) == len(set(cands))
        # every encoding canonicalises into the enumerated candidates, and they are all hit
        choices = [tiny.blocks[b].layer_choices(i) for i in range(tiny.blocks[b].layers)]
        canon = {Arch((tuple(tiny.parse_arch("|".join(
            ".".join(c) if j == b else str(Arch((tiny.largest_arch().blocks[j],))) for j in range(len(tiny.blocks))
        )).blocks[b]),)).canonical().blocks[0] for c in itertools.product(*choices)}
        assert canon == set(cands)


def test_arch_string_round_trip(tiny, mbconv, rng):
    for space in (tiny, mbconv):
        for _ in range(50):
            a = space.sample(rng, canonical=False)
            assert space.parse_arch(str(a)) == a
            assert Arch.from_json(a.to_json(space), space) == a


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("k3e3.skip|k3e3.skip.skip|k3e3.skip.skip", "3 blocks"),
    ("k3e3|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip", "block 0 has 1 layers"),
    ("skip.k3e3|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip", "block 0 layer 0 is not allowed"),
    ("k3e3.k4e3|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip", "'k4e3' at block 0 layer 1"),
    ("k3e3.conv|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip", "'conv'"),
])
def test_bad_arch_strings_say_what_is_wrong(tiny, text, fragment):
    with pytest.raises(ArchError, match=fragment.replace("(", r"\(")):
        tiny.parse_arch(text)


def test_space_file_round_trip(tmp_path, tiny):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(tiny.to_dict()))
    again = load_space(p)
    assert again == tiny and again.fingerprint == tiny.fingerprint


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.update(widht=3), "unknown key 'widht'"),
    (lambda d: d["blocks"][0].update(strid=2), "block 0: unknown key 'strid'; did you mean 'stride'"),
    (lambda d: d["blocks"][1].update(stride=3), "stride must be 1 or 2"),
    (lambda d: d["blocks"][0].update(choices=["k3e3", "k3x3"]), "unknown op 'k3x3'"),
    (lambda d: d.pop("blocks"), "missing key 'blocks'"),
    (lambda d: d.update(input_size=-1), "input_size must be a positive integer"),
])
def test_bad_space_files(tmp_path, tiny, mutate, fragment):
    import yaml

    d = tiny.to_dict()
    mutate(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(SpaceError, match=fragment):
        load_space(p)


def test_unparseable_space_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(SpaceError, match="cannot be parsed"):
        load_space(p)


def test_fingerprint_ignores_name_but_not_shape(tiny):
    import dataclasses

    assert dataclasses.replace(tiny, name="other").fingerprint == tiny.fingerprint
    assert dataclasses.replace(tiny, head_channels=64).fingerprint != tiny.fingerprint


def test_layer_keys_cover_every_layer_of_random_archs(tiny, mbconv, rng):
    for space in (tiny, mbconv):
        keys = {s.key for s in space.all_layer_specs()}
        for _ in range(30):
            arch = space.sample(rng)
            assert {s.key for s in space.layer_specs(arch) if s.key} <= keys
