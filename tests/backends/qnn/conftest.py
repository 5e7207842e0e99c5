import pytest

from backends.qnn.runner import register_htp


@pytest.fixture(scope="session", autouse=True)
def htp():
    """The QNN EP is registered once per process (a second registration fails)."""
    register_htp()
