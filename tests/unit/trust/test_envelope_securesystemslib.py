"""DSSE compatibility with securesystemslib's implementation (used by in-toto and TUF).

Both directions: securesystemslib verifies bastion's envelopes, bastion verifies
securesystemslib's, for Ed25519, ECDSA P-256/P-384 and RSA-PSS keys.
"""

from __future__ import annotations

import json

import pytest
from tests.conftest import need_module

from bastion.trust.envelope import parse_envelope, sign_envelope, verify_envelope
from bastion.trust.signer import SignatureScheme, SoftwareSigner, Verifier

TYPE = "application/vnd.in-toto+json"
SCHEMES = {
    "ed25519": ("ed25519", SignatureScheme.ED25519),
    "ecdsa-p256": ("ecdsa-sha2-nistp256", SignatureScheme.ECDSA_P256_SHA256),
    "ecdsa-p384": ("ecdsa-sha2-nistp384", SignatureScheme.ECDSA_P384_SHA384),
    "rsa-2048": ("rsassa-pss-sha256", SignatureScheme.RSA_PSS_SHA256),
}


@pytest.mark.parametrize("alg", sorted(SCHEMES))
def test_both_directions(keygen, alg: str) -> None:
    need_module("securesystemslib", "securesystemslib (bastion[server] via tuf)")
    from securesystemslib import dsse
    from securesystemslib.signer import CryptoSigner, SSlibKey

    sslib_scheme, scheme = SCHEMES[alg]
    key = keygen(alg)
    ours = SoftwareSigner(key, scheme)
    public = SSlibKey.from_crypto(key.public_key(), keyid=ours.key_id, scheme=sslib_scheme)
    theirs = CryptoSigner(key, public)

    # bastion -> securesystemslib
    env = sign_envelope(TYPE, b'{"_type": "statement"}', [ours])
    sslib_env = dsse.Envelope.from_dict(json.loads(env.to_bytes()))
    assert sslib_env.pae() == env.signed_bytes()
    assert set(sslib_env.verify([public], 1)) == {ours.key_id}

    # securesystemslib -> bastion
    other = dsse.Envelope(payload=b"payload bytes", payload_type=TYPE, signatures={})
    other.sign(theirs)
    parsed = parse_envelope(json.dumps(other.to_dict()).encode())
    verifier = Verifier.of(key.public_key(), scheme)
    assert verify_envelope(parsed, [verifier], payload_type=TYPE) == b"payload bytes"
