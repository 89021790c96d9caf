"""Shared pytest setup: seeded, deadline-free hypothesis profile and the --runslow switch."""
import os

import pytest
import torch
from hypothesis import settings

# Seeded and reproducible: the same examples on every run and every machine.
settings.register_profile('incres', derandomize=True, deadline=None, print_blob=True)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'incres'))
torch.set_num_threads(1)  # pytest-xdist runs one worker per core


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False, help='also run tests marked slow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'): return
    skip = pytest.mark.skip(reason='slow: run with --runslow (make test-slow)')
    for item in items:
        if 'slow' in item.keywords: item.add_marker(skip)
