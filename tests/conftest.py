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
