import pytest

from experiment import native


@pytest.fixture(scope="session")
def build_dir():
    """The programs under test, compiled natively once per session."""
    return native.build()
