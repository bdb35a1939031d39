"""Property tests for the server's edge parsers: token format, listen address, env assignment."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bastion.cli.env import parse_assignment
from bastion.cli.server import parse_listen
from bastion.errors import AuthError, ConfigError, FormatError
from bastion.server.auth import tokens


@given(st.text(max_size=80))
def test_token_check_accepts_or_raises_auth_error(text: str) -> None:
    try:
        tokens.check_format(text, tokens.PAT_PREFIX)
    except AuthError:
        return
    assert text.startswith(tokens.PAT_PREFIX)


@given(st.sampled_from([tokens.PAT_PREFIX, tokens.SESSION_PREFIX, "bst_dev_"]))
def test_new_tokens_round_trip(prefix: str) -> None:
    token, digest = tokens.new_token(prefix)
    tokens.check_format(token, prefix)
    assert tokens.token_hash(token) == digest


@given(st.text(max_size=40))
def test_parse_listen_total(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ConfigError:
        return
    assert 0 <= port <= 65535 and host


@given(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), st.text(max_size=30))
def test_parse_assignment_round_trip(name: str, value: str) -> None:
    assert parse_assignment(f"{name}={value}") == (name, value)


@given(st.text(max_size=40))
def test_parse_assignment_total(text: str) -> None:
    try:
        name, value = parse_assignment(text)
    except FormatError:
        return
    assert text == f"{name}={value}"
