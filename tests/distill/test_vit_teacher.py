"""A torchvision ViT as the teacher of a transformer space: tapped at encoder-layer boundaries,
tokens turned into the student's grid (class token dropped)."""

import pytest
import torch

from dna_deploy.distill.student import BlockStudent
from dna_deploy.distill.teacher import load_teacher, tokens_to_grid
from dna_deploy.errors import DataError
from dna_deploy.space import load_space


def test_tokens_to_grid_drops_the_class_token():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # class token + 2x2 grid
    g = tokens_to_grid(t)
    assert g.shape == (2, 3, 2, 2)
    assert torch.equal(g[0, :, 0, 1], t[0, 2])  # row 0, column 1 is the second patch token
    with pytest.raises(DataError, match="7 tokens"):
        tokens_to_grid(torch.zeros(1, 7, 3))


@pytest.fixture(scope="module")
def vit_b_16_weights(tmp_path_factory):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit") / "vit_b_16.pth"
    torch.save(torchvision.models.vit_b_16(weights=None, num_classes=10).state_dict(), path)
    return path


def test_vit_b_16_teaches_vit_small_at_evenly_spaced_layers(vit_b_16_weights):
    space = load_space("vit-small")
    teacher = load_teacher("torchvision:vit_b_16", space, weights=vit_b_16_weights)
    assert teacher.taps == [f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)]
    assert teacher.channels == [768] * 4 and teacher.description["num_classes"] == 10
    x = torch.randn(1, 3, 224, 224)
    feats = teacher.features(x)
    assert [tuple(f.shape) for f in feats] == [(1, 768, 14, 14)] * 4
    # a student block of vit-small distils from it through a 384 -> 768 adapter
    student = BlockStudent(space, 0, teacher.channels).eval()
    ops = space.largest_arch().blocks[0]
    with torch.no_grad():
        out = student(x, ops)
    assert out.shape == feats[0].shape
    with pytest.raises(DataError, match="takes 224x224 images"):
        load_teacher("torchvision:vit_b_16", load_space("vit-tiny"), weights=vit_b_16_weights)
