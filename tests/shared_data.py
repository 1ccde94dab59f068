"""Where ``../shared/data`` is (real slides, IDC mosaics), and the mark for tests that need it:
one definition for the ``shared`` fixture (conftest) and module-level paths alike."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"../shared/data is absent (CI has it): {SHARED}"
)
