"""Fixtures shared by every test module.

Family-specific fixtures live in their family's test module; what is here is
used across families: seeded generators, random boxes, and the installed
mmdet loss modules as the parity reference.
"""
import pytest
import torch

from tests.helpers import jitter_boxes, random_boxes

torch.set_num_threads(1)


@pytest.fixture
def generator():
    """A seeded CPU generator, so every test draws the same numbers."""
    return torch.Generator().manual_seed(0)


@pytest.fixture
def box_pair(generator):
    """A function ``(n, dtype) -> (pred, target)`` of overlapping boxes."""

    def make(n=1000, dtype=torch.float32, scale=100.0):
        target = random_boxes(n, generator, scale, torch.float64)
        pred = jitter_boxes(target, generator)
        return pred.to(dtype), target.to(dtype)

    return make


@pytest.fixture(scope='session')
def mmdet_losses():
    """``mmdet.models.losses``, the parity reference (skips if absent)."""
    return pytest.importorskip('mmdet.models.losses')
