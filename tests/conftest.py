import pytest

from experiment import native


@pytest.fixture(scope="session")
def build_dir():
    """The programs under test, compiled natively once per session."""
    return native.build()


@pytest.fixture(scope="module")
def client():
    """A client of this machine's Docker engine."""
    from experiment import engine

    return engine.connect()


@pytest.fixture(scope="session")
def second_engine():
    """A second dockerd on this machine (tests/engines.py), removed with its data at the end."""
    import engines

    if engines.dockerd_binary() is None:
        pytest.skip("no dockerd on this machine: install docker.io")
    engine = engines.start()
    try:
        yield engine
    finally:
        engines.stop(engine)
