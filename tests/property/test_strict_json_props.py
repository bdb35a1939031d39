"""Hypothesis: every parser of untrusted JSON refuses deep and oversized documents cleanly.

Each row of PARSERS is one entry point where JSON bastion did not write comes in. For
each, hypothesis builds documents nested past :data:`bastion.limits.JSON_MAX_DEPTH`
(up to tens of thousands of levels, the stdlib parser's recursion would overflow) and
documents just over the parser's size bound; the parser must raise its documented error
(FormatError, or the branch its caller maps it to), never RecursionError or anything else.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion import limits
from bastion.errors import ConfigError, FormatError, TpmError
from bastion.formats import luks2_json, strict_json

_TMP: list[Path] = []


def _tmp() -> Path:
    assert _TMP, "tmp folder fixture did not run"
    return _TMP[0]


@pytest.fixture(autouse=True)
def _folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    _TMP[:] = [tmp_path_factory.mktemp("strict-json")]


def _file(name: str, data: bytes) -> Path:
    path = _tmp() / name
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


def _operator_config(data: bytes) -> Any:
    from bastion.server.client import OperatorConfig

    return OperatorConfig.load(_file("operator.json", data))


def _tpm_key_file(data: bytes) -> Any:
    from bastion.cli.tpm import load_key

    return load_key(_file("ak.json", data))


def _keyset(data: bytes) -> Any:
    from bastion.trust.keyset import MANIFEST, KeySet

    folder = _tmp() / "keyset"
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).write_bytes(data)
    return KeySet.load(folder)


def _sim_device(data: bytes) -> Any:
    from bastion.device.platform.sim import DEVICE_FILE, SimPlatform

    folder = _tmp() / "device"
    folder.mkdir(exist_ok=True)
    (folder / DEVICE_FILE).write_bytes(data)
    return SimPlatform(folder).config


def _envelope(data: bytes) -> Any:
    from bastion.trust.envelope import parse_envelope

    return parse_envelope(data)


def _profile(data: bytes) -> Any:
    from bastion.device.profile import parse_profile

    return parse_profile(data)


def _tpm_key(data: bytes) -> Any:
    from bastion.trust.keys import tpm_key_from_bytes

    return tpm_key_from_bytes(data)


def _revocations(data: bytes) -> Any:
    from bastion.trust.pki import RevocationState

    return RevocationState.parse(data)


def _identity(data: bytes) -> Any:
    from bastion.device.provision import DeviceIdentity

    return DeviceIdentity.from_json(data)


def _software_tpm_state(data: bytes) -> Any:
    from bastion.tpm._software_state import State

    return State.from_json(data, "test")


def _luks2_area(data: bytes) -> Any:
    return luks2_json.parse_json_area(data + bytes(4096 - len(data) % 4096))


def _request_body(data: bytes) -> Any:
    """The server's middleware in front of an app that must never be reached."""
    from bastion.server.json_body import StrictJsonMiddleware

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app saw a body the strict loader refuses")

    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": data, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "headers": [(b"content-type", b"application/json")]}
    middleware = StrictJsonMiddleware(app, max_body=limits.HTTP_MAX_BODY)
    asyncio.run(middleware(scope, receive, send))
    status = sent[0]["status"]
    raise FormatError(f"HTTP {status}") if status in (413, 422) else AssertionError(status)


#: name -> (parser, wrapper around the nested value, size bound, errors it may raise)
PARSERS: dict[str, tuple[Callable[[bytes], Any], bytes, int, tuple[type[Exception], ...]]] = {
    "strict_json": (strict_json.loads, b"%s", limits.JSON_MAX_SIZE, (FormatError,)),
    "luks2_json_area": (_luks2_area, b'{"keyslots":%s}', 4 * limits.MiB, (FormatError,)),
    "envelope": (_envelope, b'{"payload":%s}', limits.ENVELOPE_MAX_SIZE, (FormatError,)),
    "security_profile": (_profile, b'{"features":%s}', limits.PROFILE_MAX_SIZE, (FormatError,)),
    "tpm_key": (_tpm_key, b'{"public":%s}', limits.KEY_FILE_MAX_SIZE, (FormatError,)),
    "revocation_state": (_revocations, b'{"revoked":%s}', limits.JSON_MAX_SIZE, (FormatError,)),
    "device_identity": (_identity, b'{"version":%s}', limits.JSON_MAX_SIZE, (FormatError,)),
    "software_tpm_state": (
        _software_tpm_state,
        b'{"nv":%s}',
        limits.SOFTWARE_TPM_STATE_MAX_SIZE,
        (TpmError,),
    ),
    "operator_config": (
        _operator_config,
        b'{"server":%s}',
        limits.KEY_FILE_MAX_SIZE,
        (ConfigError, FormatError),
    ),
    "tpm_key_file": (_tpm_key_file, b'{"format":%s}', limits.KEY_FILE_MAX_SIZE, (FormatError,)),
    "keyset_manifest": (_keyset, b'{"keys":%s}', limits.JSON_MAX_SIZE, (FormatError,)),
    "sim_device_json": (_sim_device, b'{"tpm":%s}', 4 * limits.JSON_MAX_SIZE, (FormatError,)),
    "request_body": (_request_body, b'{"config":%s}', limits.HTTP_MAX_BODY, (FormatError,)),
}

_OPEN = {b"[": b"]", b'{"a":': b"}", b'[{"k":': b"}]"}


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(limits.JSON_MAX_DEPTH + 1, 50_000))
    opener = draw(st.sampled_from(sorted(_OPEN)))
    closed = draw(st.booleans())
    leaf = draw(st.sampled_from([b"1", b'"x"', b"[]", b"{}", b"null"]))
    return opener * depth + leaf + (_OPEN[opener] * depth if closed else b"")


def _expect_refused(name: str, data: bytes) -> None:
    parse, _, _, errors = PARSERS[name]
    with pytest.raises(errors):
        parse(data)


_fast = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("name", sorted(PARSERS))
@_fast
@given(inner=nested())
def test_deeply_nested_json_is_refused(name: str, inner: bytes) -> None:
    _expect_refused(name, PARSERS[name][1] % inner)


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(
    max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(extra=st.integers(1, 4096), filler=st.sampled_from([b" ", b"0,"]))
def test_oversized_json_is_refused(name: str, extra: int, filler: bytes) -> None:
    _, wrap, bound, _ = PARSERS[name]
    shell = wrap % b"[]"
    count = (bound + extra - len(shell)) // len(filler) + 1
    inner = b"[" + filler * count + b"0]" if filler == b"0," else b"[" + filler * count + b"]"
    data = wrap % inner
    assert len(data) > bound
    _expect_refused(name, data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab\u00e9,:', max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\k', max_size=4), children, max_size=3)
    ),
    max_leaves=20,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@given(_json_values, st.booleans())
def test_depth_scan_matches_the_real_depth(value: Any, ascii_only: bool) -> None:
    import json

    text = json.dumps(value, ensure_ascii=ascii_only)
    assert strict_json.nesting_depth(text) == _depth(value)
    if _depth(value) <= limits.JSON_MAX_DEPTH:
        assert strict_json.loads(text.encode()) == value
