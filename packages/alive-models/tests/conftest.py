import pytest
import torch

from alive_models import build_model, get_preset
from alive_models.testing import random_inputs


@pytest.fixture
def tiny_config():
    return get_preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    return build_model(tiny_config, seed=0)


@pytest.fixture
def inputs(tiny_config):
    return random_inputs(tiny_config, batch=2, generator=torch.Generator().manual_seed(1))
