"""Small parsers at the edge: listen addresses, env assignments, loopback detection."""

from __future__ import annotations

import pytest

from bastion.cli.env import parse_assignment
from bastion.cli.server import parse_listen
from bastion.errors import ConfigError, FormatError
from bastion.server.settings import is_loopback


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:80", ("::1", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(text, expected) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8443", ":8443", "host:", "host:port", "host:70000", ""])
def test_parse_listen_rejects(text) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("A=1", ("A", "1")), ("_x=a=b", ("_x", "a=b")), ("E=", ("E", ""))]
)
def test_parse_assignment(text, expected) -> None:
    assert parse_assignment(text) == expected


@pytest.mark.parametrize("text", ["=1", "1A=2", "A", "A-B=1", "A B=1"])
def test_parse_assignment_rejects(text) -> None:
    with pytest.raises(FormatError):
        parse_assignment(text)


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("localhost.evil.org", False),
    ],
)
def test_is_loopback(host, loop) -> None:
    assert is_loopback(host) is loop
