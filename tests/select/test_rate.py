import json

import pytest
import torch
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.distill.student import load_block
from dna_deploy.distill.teacher import load_teacher
from dna_deploy.errors import DataError
from dna_deploy.select.rate import (
    _Context,
    block_inputs,
    load_ratings,
    rate_block_naive,
    rate_block_tree,
    rate_supernet,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def ratings(tiny_supernet, tiny_teacher, mnist32, tmp_path_factory):
    from dna_deploy.space import load_space

    space = load_space("tiny")
    out = tmp_path_factory.mktemp("ratings") / "ratings.json"
    teacher = load_teacher(str(tiny_teacher[0]), space)
    return out, rate_supernet(space, tiny_supernet[0], teacher, mnist32, out, calib_images=128, show_progress=False)


def test_every_candidate_of_every_block_is_rated(ratings, tiny):
    _, table = ratings
    assert [b["block"] for b in table["blocks"]] == list(range(len(tiny.blocks)))
    for b in table["blocks"]:
        expected = {".".join(map(str, ops)) for ops in tiny.block_candidates(b["block"])}
        assert set(b["candidates"]) == expected
        for c in b["candidates"].values():
            assert c["loss"] > 0 and c["macs"] > 0 and c["params"] > 0
    assert table["data"]["rated_on"] == "rate split"
    assert sum(len(b["candidates"]) for b in table["blocks"]) == 600


@pytest.mark.parametrize("block", [0, 1, 3])  # the stem block, a 3-layer block, a 2-layer block
def test_prefix_tree_equals_one_by_one(tiny_supernet, tiny_teacher, mnist32, tiny, block):
    teacher = load_teacher(str(tiny_teacher[0]), tiny)
    x_cal, f_cal, x_rate, f_rate = block_inputs(teacher, mnist32, calib_images=64)
    cb = 32
    student, state = load_block(tiny, tiny_supernet[0], block)
    cal_in = x_cal if block == 0 else f_cal[block - 1]
    rate_in = (x_rate if block == 0 else f_rate[block - 1])[:128]
    target = f_rate[block][:128]
    cal = [cal_in[i:i + cb] for i in range(0, len(cal_in), cb)]
    tree = rate_block_tree(tiny, block, _Context(student, cal, rate_in, target, "l1-norm", state["channel_std"]))
    naive = rate_block_naive(tiny, block, student, cal, rate_in, target, state["channel_std"])
    assert tree.keys() == naive.keys()
    for k in naive:
        assert tree[k]["l1-norm"] == pytest.approx(naive[k]["l1-norm"], rel=1e-6, abs=1e-7)


def test_bn_recalibration_changes_ratings(tiny_supernet, tiny_teacher, mnist32, tiny):
    """Shared BN statistics are wrong for a single path: re-estimating them must matter."""
    from dna_deploy.distill.student import feature_distance

    teacher = load_teacher(str(tiny_teacher[0]), tiny)
    x_cal, f_cal, x_rate, f_rate = block_inputs(teacher, mnist32, calib_images=64)
    student, state = load_block(tiny, tiny_supernet[0], 1)
    ops = tiny.smallest_arch().blocks[1]
    with torch.no_grad():
        shared = float(feature_distance(student.eval()(f_rate[0], ops), f_rate[1], "l1-norm"))
    tree = rate_block_tree(tiny, 1, _Context(student, [f_cal[0]], f_rate[0], f_rate[1], "l1-norm", state["channel_std"]))
    assert tree[".".join(map(str, ops))]["l1-norm"] != pytest.approx(shared, rel=1e-3)


def test_resume_keeps_finished_blocks(ratings, tiny_supernet, tiny_teacher, mnist32, tiny, tmp_path):
    path, table = ratings
    partial = tmp_path / "r.json"
    d = json.loads(path.read_text())
    d["blocks"] = d["blocks"][:2]  # as if stopped after two blocks
    real_hash = d["blocks"][1]["checkpoint_sha256"]
    d["blocks"][1]["candidates"]["k3e3.skip.skip"]["loss"] = 99.0  # a stale rating ...
    d["blocks"][1]["checkpoint_sha256"] = "0" * 16  # ... of a block checkpoint that has since changed
    partial.write_text(json.dumps(d))
    teacher = load_teacher(str(tiny_teacher[0]), tiny)
    again = rate_supernet(tiny, tiny_supernet[0], teacher, mnist32, partial, calib_images=128, show_progress=False)
    assert again["blocks"][0]["candidates"] == table["blocks"][0]["candidates"]  # kept, not recomputed
    assert again["blocks"][1]["checkpoint_sha256"] == real_hash  # re-rated from the checkpoint there now
    assert again["blocks"][1]["candidates"]["k3e3.skip.skip"]["loss"] == pytest.approx(
        table["blocks"][1]["candidates"]["k3e3.skip.skip"]["loss"])
    assert len(again["blocks"]) == 4
    load_ratings(partial, tiny)


def test_ratings_for_another_space_or_incomplete_are_refused(ratings, tmp_path, mbconv, tiny):
    path, _ = ratings
    with pytest.raises(DataError, match="is for space 'tiny'"):
        load_ratings(path, mbconv)
    d = json.loads(path.read_text())
    d["blocks"] = d["blocks"][:3]
    p = tmp_path / "inc.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"lacks block\(s\) \[3\]"):
        load_ratings(p, tiny)


def test_rate_then_search_cli_returns_optimum_within_budget(ratings, tmp_path, tiny):
    """On real ratings and a real latency table: the CLI's answer is the brute-force optimum."""
    import itertools

    from dna_deploy.latency.devices import load_device
    from dna_deploy.latency.profiler import profile
    from dna_deploy.latency.table import LatencyTable

    path, table = ratings
    lut = tmp_path / "lut.json"
    profile(tiny, load_device("x86-cpu-onnxruntime"), lut, rounds=1, runs_per_round=5, max_extra_rounds=0, show_progress=False)
    t = LatencyTable.load(lut)
    lo, hi = t.predict(tiny, tiny.smallest_arch())["raw_ms"], t.predict(tiny, tiny.largest_arch())["raw_ms"]
    budget = lo + 0.4 * (hi - lo)
    r = runner.invoke(app, ["search", "-s", "tiny", "-r", str(path), "-t", str(lut), "-b", str(budget),
                            "--pareto", str(tmp_path / "front"), "-f", "json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    best = out["results"][0]
    assert best["latency_ms:x86-cpu-onnxruntime"] <= budget + 1e-9
    assert (tmp_path / "front.png").stat().st_size > 1000 and (tmp_path / "front.csv").is_file()
    # brute force over every network of the tiny space (117M) is too many; over the per-block
    # candidates that fit, pruned by the same bound, it is exact and small enough:
    blocks = [b["candidates"] for b in table["blocks"]]
    per_block = []
    for bi, cands in enumerate(blocks):
        rows = [(v["loss"], t.block_ms(tiny, bi, tiny.parse_arch_block(bi, k)), k) for k, v in cands.items()]
        rows.sort()
        # keep only candidates not dominated in (loss, latency): the optimum uses one of them
        kept, best_lat = [], float("inf")
        for loss, lat, k in rows:
            if lat < best_lat:
                kept.append((loss, lat, k))
                best_lat = lat
        per_block.append(kept)
    fixed = t.fixed_ms(tiny)
    opt = min((sum(c[0] for c in combo), combo) for combo in itertools.product(*per_block)
              if fixed + sum(c[1] for c in combo) <= budget + 1e-12)
    assert best["rating"] == pytest.approx(opt[0])
    r = runner.invoke(app, ["search", "-s", "tiny", "-r", str(path), "-t", str(lut), "-b", "0.000001"])
    assert r.exit_code == 1 and "smallest reachable" in r.output
