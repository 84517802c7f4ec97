"""Shared test configuration: the repository root and the built site's location."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use small tensors: one intra-op thread is faster (no spin-waiting) and deterministic."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
