"""DNA++ (teacher-free) on the transformer space: block-wise self-supervised training and rating."""

import json

import pytest
import torch

from dna_deploy.data import stack
from dna_deploy.distill.selfsup import PopulationCentre, output_spread, train_blocks_selfsup
from dna_deploy.distill.student import load_block
from dna_deploy.settings import DistillConfig
from dna_deploy.space import load_space

pytestmark = pytest.mark.slow


def test_dnapp_trains_and_rates_vit_tiny(tmp_path, mnist32):
    from dna_deploy.select.rate import rate_supernet

    space = load_space("vit-tiny")
    cfg = DistillConfig(method="dna++", epochs=1, max_steps=8, batch_size=32, lr_edge=1e-3, lr_inner=2e-3)
    result = train_blocks_selfsup(space, mnist32, tmp_path, config=cfg, blocks=[0, 1], show_progress=False)
    assert sorted(result) == [0, 1]
    for b in range(2):
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result[b]["history"])
    x, _ = stack(mnist32.rate, 128)
    for b in range(2):  # each block's largest path keeps images apart (no collapse)
        student, _ = load_block(space, tmp_path, b)
        inp = x if b == 0 else PopulationCentre(space, tmp_path, upto=b).features(x)[b - 1]
        with torch.no_grad():
            assert output_spread(student.eval().supernet(inp, space.largest_arch().blocks[b])) > 0.01
    # block 1 is rated on the population centre of block 0's output: the cross-block path
    rate_supernet(space, tmp_path, None, mnist32, tmp_path / "ratings.json", blocks=[1], calib_images=64,
                  rate_images=128, show_progress=False)
    saved = json.loads((tmp_path / "ratings.json").read_text())
    losses = [c["loss"] for b in saved["blocks"] for c in b["candidates"].values()]
    assert saved["method"] == "dna++" and len(losses) == 90 and all(0 <= v <= 4 for v in losses)
