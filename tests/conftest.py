import os
import random

import pytest

# Timing tests and runtimes behave better with one thread on a 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def tiny():
    from dna_deploy.space import load_space

    return load_space("tiny")


@pytest.fixture
def mbconv():
    from dna_deploy.space import load_space

    return load_space("dna-mbconv")


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture(scope="session")
def mnist32():
    from dna_deploy.data import load_mnist

    return load_mnist(32)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, mnist32):
    """A teacher of the tiny space, trained briefly on the embedded MNIST subset (real training)."""
    from dna_deploy.distill.teacher import train_space_teacher
    from dna_deploy.settings import ClassifierConfig
    from dna_deploy.space import load_space

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    result = train_space_teacher(load_space("tiny"), mnist32, path, show_progress=False,
                                 arch="k3e3.k3e3|k3e3.k3e3.k3e3|k3e3.k3e3.k3e3|k3e3.k3e3",
                                 config=ClassifierConfig(epochs=2))
    return path, result


@pytest.fixture(scope="session")
def tiny_supernet(tmp_path_factory, mnist32, tiny_teacher):
    """Block supernets of the tiny space distilled from that teacher (a few epochs, capped steps)."""
    from dna_deploy.distill.blockwise import train_blocks
    from dna_deploy.distill.teacher import load_teacher
    from dna_deploy.settings import DistillConfig
    from dna_deploy.space import load_space

    space = load_space("tiny")
    out = tmp_path_factory.mktemp("supernet")
    teacher = load_teacher(str(tiny_teacher[0]), space)
    result = train_blocks(space, mnist32, teacher, out, config=DistillConfig(epochs=3, max_steps=12), show_progress=False)
    return out, result


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, mnist32):
    """A small network of the tiny space trained for real (2 epochs): what export ships."""
    from dna_deploy.distill.retrain import retrain
    from dna_deploy.settings import ClassifierConfig
    from dna_deploy.space import load_space

    space = load_space("tiny")
    arch = space.parse_arch("k3e3.skip|k3e3.k3e3.skip|k3e3.k3e3.skip|k3e3.skip")
    out = tmp_path_factory.mktemp("model")
    r = retrain(space, arch, mnist32, out, config=ClassifierConfig(epochs=2), show_progress=False)
    return out / "model.pt", r
