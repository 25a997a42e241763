"""Opt-in pytest plugin: run the tests as on a GPU box, where `torch.cuda.is_available()`
answers True, on any machine:

    python -m pytest -p tests.fake_cuda_available tests/test_x.py

Only the pytest process is faked (its trials and other children ask their own torch), and
only that one answer: a torch built without CUDA still says so (`torch.backends.cuda.is_built()`),
NVML still finds no GPU, and no CUDA call works. What it shows is which tests assume the
machine has no GPU. Not part of the normal run."""

import torch


def pytest_configure(config):
    torch.cuda.is_available = lambda: True
