"""Suite-wide test configuration: shared server fixtures and the gpu marker's skip rule."""

import pytest

pytest_plugins = ["tests.fixtures.servers", "tests.fixtures.ray_serve", "tests.fixtures.motion"]


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: no GPU on this machine (run on a lent GPU box)")
    for item in gpu_items:
        item.add_marker(skip)
