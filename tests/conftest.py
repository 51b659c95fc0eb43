"""Shared fixtures: a real dev PKI made at test time (see support.py for the helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import DevPKI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A session-wide PKI. Do not revoke in it: use ``fresh_pki``."""
    return make_pki(tmp_path_factory.mktemp("session-pki"))


@pytest.fixture
def fresh_pki(tmp_path: Path) -> DevPKI:
    """A PKI of the test's own, for tests that revoke or otherwise change it."""
    return make_pki(tmp_path)


@pytest.fixture(scope="session")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPKI:
    """A second, unrelated PKI: its certificates are untrusted by ``pki``."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))
