"""Block-level latency tables: every candidate of every block timed as one model on a real runtime,
predictions additive over blocks, search exact on them, validation as for layer tables."""

import random
from pathlib import Path

import pytest
import torch

from dna_deploy.latency.devices import load_device
from dna_deploy.latency.profiler import profile
from dna_deploy.latency.table import LatencyTable, block_entry_key
from dna_deploy.latency.validate import validate_table
from dna_deploy.nn.builder import build_network
from dna_deploy.nn.modules import build_block
from dna_deploy.select.search import brute_force, build_problem, search, synthetic_ratings
from dna_deploy.space import load_space

SPACE = Path(__file__).resolve().parent.parent / "data" / "mbconv64.yaml"


@pytest.fixture(scope="module")
def space():
    return load_space(SPACE)


@pytest.fixture(scope="module")
def block_table(space, tmp_path_factory):
    out = tmp_path_factory.mktemp("blocks") / "ort__mbconv64__blocks.json"
    profile(space, load_device("x86-cpu-onnxruntime"), out, rounds=1, runs_per_round=5, max_extra_rounds=0,
            show_progress=False, warmup_s=0.0, granularity="block")
    return LatencyTable.load(out)


def test_one_entry_per_block_candidate_plus_stem_and_head(space, block_table):
    candidates = {block_entry_key(space.block_specs(b, ops)) for b in range(len(space.blocks))
                  for ops in space.block_candidates(b)}
    fixed = {s.key for s in space.stem_specs() + [space.head_spec()]}
    assert len(candidates) == sum(len(space.block_candidates(b)) for b in range(len(space.blocks))) == 42
    assert set(block_table.entries) == candidates | fixed
    assert block_table.granularity == "block" and block_table.missing_entries(space) == []
    assert all(e["p10_ms"] > 0 for e in block_table.entries.values())


def test_a_block_entry_times_the_block_the_network_runs(space):
    """The op model of a block candidate computes what that block computes inside the network."""
    arch = space.largest_arch()
    torch.manual_seed(0)
    net = build_network(space, arch).eval()
    block = build_block(space.block_specs(1, arch.blocks[1])).eval()
    block.load_state_dict(net.blocks[1].state_dict())
    x = torch.randn(1, 3, space.input_size, space.input_size)
    with torch.no_grad():
        feats = net.forward_features(x)
        assert torch.allclose(block(feats[0]), feats[1], atol=1e-6)


def test_prediction_is_stem_head_and_one_entry_per_block(space, block_table):
    arch = space.sample(random.Random(3))
    expect = block_table.fixed_ms(space) + sum(
        block_table.entry_ms(block_entry_key(space.block_specs(b, ops))) for b, ops in enumerate(arch.blocks))
    assert block_table.raw_ms(space, arch) == pytest.approx(expect)


def test_search_on_a_block_table_is_exact(space, block_table):
    ratings = synthetic_ratings(space, seed=1)
    budget = block_table.raw_ms(space, space.largest_arch()) * 0.8
    problem = build_problem(space, ratings, [block_table], [budget])
    best_loss, best_choice = brute_force(problem)[0]
    found = search(space, ratings, [block_table], [budget])[0]
    assert found["rating"] == pytest.approx(best_loss)
    arch = space.parse_arch(found["arch"])
    assert block_table.raw_ms(space, arch) <= budget + 1e-9
    assert found["latency_ms:x86-cpu-onnxruntime"] == pytest.approx(block_table.raw_ms(space, arch))


def test_validation_calibrates_a_block_table(space, block_table, tmp_path):
    rep = validate_table(block_table.path, space, samples=8, rounds=1, runs_per_round=5, max_extra_rounds=1, warmup_s=0.0,
                         show_progress=False, output=tmp_path / "cal.json", work_dir=tmp_path / "work")
    cal = LatencyTable.load(tmp_path / "cal.json")
    assert cal.granularity == "block" and cal.calibration["a"] > 0
    assert rep["held_out_networks"] == 4 and 0 <= rep["calibrated"]["within_10pct"] <= 1


def test_torch_runtime_builds_block_models_from_the_bundle(space, tmp_path):
    out = tmp_path / "torch.json"
    table = profile(space, load_device("x86-cpu-torch"), out, rounds=1, runs_per_round=2, max_extra_rounds=0,
                    show_progress=False, warmup_s=0.0, granularity="block")
    assert table.granularity == "block" and table.missing_entries(space) == []


def test_unknown_granularity_is_one_clear_error(space, tmp_path):
    from typer.testing import CliRunner

    from dna_deploy.cli.app import app

    r = CliRunner().invoke(app, ["profile", "--device", "x86-cpu-onnxruntime", "--space", str(SPACE), "-o",
                                 str(tmp_path / "t.json"), "--granularity", "ops"])
    assert r.exit_code != 0 and "granularity 'ops' is not one of layer, block" in r.output
    assert "Traceback" not in r.output


def test_block_bundles_are_format_2_and_a_bad_manifest_is_one_clear_error(space, tmp_path):
    """An older dna-deploy refuses a block bundle (format 2) instead of misreading its entries."""
    import json

    from dna_deploy.errors import DataError
    from dna_deploy.latency.profiler import build_bundle, measure_bundle

    bundle = build_bundle(space, load_device("x86-cpu-torch"), tmp_path / "b", show_progress=False, granularity="block")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "dna-deploy-bundle/2" and manifest["granularity"] == "block"
    manifest["granularity"] = "ops"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="granularity 'ops' is not one this version makes"):
        measure_bundle(bundle, tmp_path / "t.json", show_progress=False)


def test_many_op_models_are_timed_in_slices_and_a_broken_run_resumes_at_its_slice(space, block_table, tmp_path):
    """With at most 10 models open (44 entries: 5 slices), every entry still gets every round; a run
    that fails in its third slice keeps the first two slices' timings and resumes at the third, with
    the same slices even when the rerun does not name them."""
    import json
    import shutil

    from dna_deploy.latency.profiler import measure_bundle

    bundle = shutil.copytree(block_table.path.with_name(block_table.path.stem + ".bundle"), tmp_path / "bundle")
    entries = json.loads((bundle / "manifest.json").read_text())["entries"]
    keys = sorted(entries)
    victim = bundle / entries[keys[25]]["file"]  # in the third slice (keys 20-29)
    saved = victim.read_bytes()
    victim.unlink()
    out = tmp_path / "sliced.json"
    timing = dict(rounds=2, runs_per_round=3, max_extra_rounds=0, warmup_s=0.0, show_progress=False, max_open=10)
    with pytest.raises(Exception):
        measure_bundle(bundle, out, **timing)
    partial = json.loads(out.with_name(out.name + ".partial").read_text())
    assert partial["slices_done"] == 2 and partial["slice_size"] == 10
    assert all(len(partial["samples"][k]) == 2 and all(len(r) == 3 for r in partial["samples"][k]) for k in keys[:20])
    assert all(len(partial["probes"][k]) == 2 and min(partial["probes"][k]) > 0 for k in keys[:20])  # one per round
    assert not any(partial["samples"][k] for k in keys[20:])
    victim.write_bytes(saved)
    timing.pop("max_open")  # unset on the rerun: it keeps the partial run's slices, whatever memory is free now
    table = measure_bundle(bundle, out, **timing)
    assert table.meta["timing"]["slices"] == 5 and table.meta["timing"]["resumed_at_slice"] == 2
    assert table.meta["timing"]["resumed_at_round"] == 0
    assert set(table.entries) == set(keys) and table.missing_entries(space) == []
    assert all(e["rounds"] == 2 and e["runs"] == 3 * e["rounds_kept"] for e in table.entries.values())
    from dna_deploy.runtimes.base import quiet_stats

    assert all(table.entries[k]["median_ms"] == pytest.approx(quiet_stats(partial["samples"][k]).median_ms, abs=1e-6)
               for k in keys[:20])  # the first two slices were not timed again


def test_models_open_at_once_follow_the_available_memory(block_table):
    """tiny-sized op models all fit at once; a bundle of dna-mbconv-sized files is sliced to what
    half the available memory holds."""
    import json

    from dna_deploy.latency import profiler

    bundle = block_table.path.with_name(block_table.path.stem + ".bundle")
    entries = json.loads((bundle / "manifest.json").read_text())["entries"]
    assert profiler.default_max_open(bundle, entries) == len(entries)
    available = profiler._available_memory_bytes()
    if available is None:
        pytest.skip("no /proc/meminfo here: no memory-based slicing")
    many = {f"k{i}": next(iter(entries.values())) for i in range(10**5)}  # 100,000 op models of this size
    per_model = profiler.OPEN_MODEL_BYTES_PER_FILE_BYTE * (bundle / many["k0"]["file"]).stat().st_size + 2**20
    assert profiler.default_max_open(bundle, many) == pytest.approx(min(len(many), 0.5 * available / per_model), rel=0.05)
