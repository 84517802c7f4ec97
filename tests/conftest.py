"""Shared test configuration: the repository root and the built site's location."""
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"


@pytest.fixture(autouse=True)
def _two_threads():
    """Keep tests on the CI machine's two cores and make them deterministic."""
    torch.set_num_threads(2)
    yield
