"""Opt-in pytest plugin: run the tests as on a GPU box, where `torch.cuda.is_available()`
answers True, on any machine:

    python -m pytest -p tests.fake_cuda_available tests/test_x.py

Only the pytest process is faked (its trials and other children ask their own torch), and
only that one answer: a torch built without CUDA still says so (`torch.backends.cuda.is_built()`),
NVML still finds no GPU, and no CUDA call works. What it shows is which tests assume the
machine has no GPU. Not part of the normal run.

Tests marked `dynamo_in_process` are skipped: torch.compile in this process believes the
answer and asks the CPU build's CUDA for a device, which only the fake lacks (on a GPU box
the same test compiles for the CPU as it does here)."""

import pytest
import torch


def pytest_configure(config):
    torch.cuda.is_available = lambda: True


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="torch.compile in the pytest process cannot run with CUDA only faked available")
    for item in items:
        if "dynamo_in_process" in item.keywords:
            item.add_marker(skip)
