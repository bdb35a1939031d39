"""Property tests: the sealed API key and the device identity file parse or raise
FormatError/AuthError, never anything else; both round-trip."""

from __future__ import annotations

import contextlib

from hypothesis import given
from hypothesis import strategies as st

from bastion.device.provision import DeviceIdentity
from bastion.errors import AuthError, FormatError
from bastion.formats import enrollment as en

KEYS = en.derive_keys(b"\x07" * 32, "ch_prop")


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", max_size=80), st.text(max_size=40))
def test_round_trip(api_key: str, device_id: str) -> None:
    assert en.open_api_key(KEYS, device_id, en.seal_api_key(KEYS, device_id, api_key)) == api_key


@given(st.binary(max_size=400))
def test_arbitrary_bytes(blob: bytes) -> None:
    with contextlib.suppress(FormatError, AuthError):
        en.open_api_key(KEYS, "dev", blob)


# --- the device identity file ----------------------------------------------------------------

_TEXT = st.text(max_size=30)
_BYTES = st.binary(max_size=40)


@given(
    st.builds(
        DeviceIdentity,
        device_id=_TEXT,
        fleet_id=_TEXT,
        server_url=_TEXT,
        certificate_pem=_TEXT,
        ca_certificate_pem=_TEXT,
        key_public=_BYTES,
        key_private=_BYTES,
        ak_public=_BYTES,
        ak_private=_BYTES,
        challenge_id=_TEXT,
        credential_blob=_BYTES,
        encrypted_secret=_BYTES,
        sealed_api_key=_BYTES,
    )
)
def test_identity_round_trip(identity: DeviceIdentity) -> None:
    assert DeviceIdentity.from_json(identity.to_json()) == identity


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_identity_arbitrary_bytes(raw: bytes) -> None:
    with contextlib.suppress(FormatError):
        DeviceIdentity.from_json(raw)


@given(
    st.dictionaries(
        st.sampled_from(["version", "device_id", "key_public"]),
        st.integers() | st.text(max_size=5) | st.none(),
    )
)
def test_identity_arbitrary_objects(doc: dict[str, object]) -> None:
    import json

    with contextlib.suppress(FormatError):
        DeviceIdentity.from_json(json.dumps(doc).encode())
