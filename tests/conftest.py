from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def shared_data():
    """../shared/data, or a clean skip on a user's clone where it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data is not present (only in the project's workspace)")
    return path


@pytest.fixture
def panopticapi():
    """The reference implementation (pip install --no-deps panopticapi-lite)."""
    return pytest.importorskip("panopticapi.evaluation")
