"""Keys shared by the trust tests (generated once per session: RSA is slow)."""

from __future__ import annotations

import pytest

from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import PrivateKey

_CACHE: dict[tuple[str, int], PrivateKey] = {}


def make_key(algorithm: str, n: int = 0) -> PrivateKey:
    """The ``n``-th test key of ``algorithm`` (cached for the session)."""
    if (algorithm, n) not in _CACHE:
        _CACHE[(algorithm, n)] = generate_private_key(KeyAlgorithm(algorithm))
    return _CACHE[(algorithm, n)]


@pytest.fixture(scope="session")
def keygen() -> object:
    return make_key
