from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def snap_path(tmp_path: Path) -> Path:
    """Where a test records its snapshot."""
    return tmp_path / "run.snap"
