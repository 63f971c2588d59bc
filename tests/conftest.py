"""Shared test set-up.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, when it is first imported, so
they are set here, before any test module imports it: the endpoint is the fake Hub of ``tests/fakehub.py`` on
a port chosen now, and ``HF_HOME`` a throwaway folder. No test can reach the real Hub or touch the user's cache.
"""

import os
import shutil
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FAKE_HUB_PORT = _free_port()
HF_HOME = tempfile.mkdtemp(prefix="edifice-tests-hf-")
os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{FAKE_HUB_PORT}", HF_HOME=HF_HOME, HF_HUB_DISABLE_TELEMETRY="1",
                  HF_HUB_DISABLE_IMPLICIT_TOKEN="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "EDIFICE_PRESETS"):
    os.environ.pop(var, None)

import pytest  # noqa: E402  (after the environment is set)

from tests.fakehub import FakeHub  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(HF_HOME, ignore_errors=True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A running fake Hub at ``HF_ENDPOINT`` and an empty Hub cache of this test's own (``tmp_path/hub``)."""
    from huggingface_hub import constants

    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"], "huggingface_hub was imported before tests/conftest.py"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = FakeHub(FAKE_HUB_PORT).start()
    yield hub
    hub.stop()
