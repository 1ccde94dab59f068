"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
from shared_data import SHARED


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared/data`` beside the checkout (real slides, IDC mosaics); skip when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared/data is absent (CI has it): {SHARED}")
    return SHARED
