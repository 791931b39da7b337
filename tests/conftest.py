import os

import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
DATA = os.path.join(EXAMPLES, "data")


@pytest.fixture
def data_dir() -> str:
    return os.path.abspath(DATA)
