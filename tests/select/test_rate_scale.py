"""Rating at scale, on the CPU: one data pass per block whatever the chunking, chunk sizes from a
memory budget, and work shared among ranks by counted cost (issue 31).

The multi-process checks (1, 2 and 4 gloo ranks agree; a failed or killed rank ends every rank)
are in tests/distill/test_scale.py beside the folder data they run on."""

import dataclasses
import json

import pytest
import torch

from dna_deploy.compute import Compute
from dna_deploy.distill.selfsup import train_blocks_selfsup
from dna_deploy.distill.teacher import load_teacher
from dna_deploy.select.rate import block_units, chunk_images, rate_supernet, share_work, unit_costs
from dna_deploy.settings import ComputeSettings, DistillConfig
from dna_deploy.space import load_space

CPU = Compute.from_settings(ComputeSettings(device="cpu", workers=0))


class CountingDataset(torch.utils.data.Dataset):
    """Counts every item read: a decode, for folder data."""

    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.reads += 1
        return self.inner[i]


class CountingTeacher:
    """The real teacher, counting the images it runs on."""

    def __init__(self, inner):
        self.inner, self.images = inner, 0

    def features(self, x):
        self.images += len(x)
        return self.inner.features(x)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _losses(table: dict) -> dict:
    return {(b["block"], k): c["loss"] for b in table["blocks"] for k, c in b["candidates"].items()}


def test_each_block_reads_every_rate_image_once_and_chunks_change_nothing(tmp_path, tiny, tiny_supernet, tiny_teacher,
                                                                          mnist32):
    """Four chunks per block: each rate image is decoded once and goes through the teacher once
    per block (the calibration images once per run), and the ratings equal one chunk's."""
    rate_images, calib = 120, 64
    results = {}
    for chunk in (None, 30):
        counting = CountingDataset(mnist32.rate)
        data = dataclasses.replace(mnist32, rate=counting)
        teacher = CountingTeacher(load_teacher(str(tiny_teacher[0]), tiny))
        results[chunk] = rate_supernet(tiny, tiny_supernet[0], teacher, data, tmp_path / f"r{chunk}.json", calib_images=calib,
                                       rate_images=rate_images, rate_chunk=chunk, compute=CPU, show_progress=False)
        blocks = len(tiny.blocks)
        assert counting.reads / (rate_images * blocks) <= 1.05
        assert (teacher.images - calib) / (rate_images * blocks) <= 1.05
        if chunk:
            assert all(b["sharding"]["rate_chunk"] == chunk for b in results[chunk]["blocks"])
    one, four = _losses(results[None]), _losses(results[30])
    assert one.keys() == four.keys()
    for k in one:
        assert four[k] == pytest.approx(one[k], rel=1e-5)


@pytest.fixture(scope="module")
def dnapp_supernet(tmp_path_factory, mnist32):
    tiny = load_space("tiny")
    out = tmp_path_factory.mktemp("dnapp")
    train_blocks_selfsup(tiny, mnist32, out, config=DistillConfig(method="dna++", epochs=1, max_steps=4),
                         compute=CPU, show_progress=False)
    return out


def test_dnapp_ratings_do_not_depend_on_the_chunk_size(tmp_path, tiny, mnist32, dnapp_supernet):
    """DNA++'s population centre normalises with batch statistics: its batches follow the view
    groups, never the chunk, so a memory budget cannot change a rating."""
    tables = [_losses(rate_supernet(tiny, dnapp_supernet, None, mnist32, tmp_path / f"pp{c}.json", calib_images=32,
                                    rate_images=600, rate_chunk=c, centre_paths=4, compute=CPU, show_progress=False))
              for c in (None, 256)]
    for k in tables[0]:
        assert tables[1][k] == pytest.approx(tables[0][k], rel=1e-5)
    table = json.loads((tmp_path / "pp256.json").read_text())
    assert table["bn_calibration"]["on"] == "rating views" and table["centre_paths"] == 4


def test_the_dnapp_rating_centre_is_the_population_not_the_training_paths(tiny, dnapp_supernet):
    """Training's target is the mean of 4 fixed paths; rating's is the mean of `centre_paths`
    (32) of them, or of every candidate where a block has no more, so the few training paths do
    not make up the target the candidates are rated against."""
    from dna_deploy.distill.selfsup import PopulationCentre

    trained = PopulationCentre(tiny, dnapp_supernet)
    rating = PopulationCentre(tiny, dnapp_supernet, paths_per_block=32)
    whole = PopulationCentre(tiny, dnapp_supernet, paths_per_block=42)
    assert [len(p) for p in trained.paths] == [4] * 4 and [len(p) for p in rating.paths] == [32] * 4
    assert [len(p) for p in whole.paths] == [42] * 4  # blocks 0 and 3 whole (42 candidates), 1 and 2 sampled
    assert set(whole.paths[0]) == set(tiny.block_candidates(0)) and set(whole.paths[3]) == set(tiny.block_candidates(3))
    assert len({trained.fingerprint, rating.fingerprint, whole.fingerprint}) == 3  # a table says which centre it used
    x = torch.randn(2, 3, 32, 32)
    assert len(rating.features(x, upto=2)) == 2 and len(rating.features(x)) == 4


@pytest.mark.parametrize("world", [4, 8])
def test_work_is_shared_by_counted_cost_and_no_rank_idles(world):
    """dna-mbconv has 6 first-layer choices: split by them, 8 ranks would leave 2 idle. Split
    into two-layer units by counted MACs, every rank works and the busiest does <= 1.15x the mean;
    the one-layer last block (6 candidates) is split by images instead."""
    space = load_space("dna-mbconv")
    split_by = []
    for b in range(len(space.blocks)):
        costs = unit_costs(space, b)
        shares, work, by_images = share_work(costs, world)
        split_by.append("images" if by_images else "candidates")
        assert all(share for share in shares), f"block {b}: a rank has no work"
        assert max(work) / (sum(work) / world) <= 1.15, (b, work)
        # every candidate belongs to exactly one unit
        depth = max(len(u) for u in block_units(space, b))
        owners = [tuple(o for o in ops if not o.is_skip)[:depth] for ops in space.block_candidates(b)]
        assert set(owners) == set(costs)
    assert split_by[1:5] == ["candidates"] * 4 and split_by[5] == "images"


def test_the_chunk_follows_the_memory_budget(tiny):
    """Twice the memory, twice the images per chunk; DNA++ chunks hold whole view groups."""
    x_cal = torch.zeros(2, 3, 32, 32)
    f_cal = [torch.zeros(2, c, r, r) for c, r in ((16, 16), (24, 8), (40, 4), (80, 2))]
    small = chunk_images(tiny, 1, x_cal, f_cal, memory_gb=0.01, views=False)
    assert chunk_images(tiny, 1, x_cal, f_cal, memory_gb=0.02, views=False) in (2 * small, 2 * small + 1)
    assert chunk_images(tiny, 1, x_cal, f_cal, memory_gb=0.01, views=True) % 256 == 0
