"""The NATS bus's names and settings: subjects cannot collide or be injected, bad URLs and
prefixes are refused before anything connects, ``--bus`` maps to the settings.

Negative tables first; the subject codec has a hypothesis round trip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.cli.server import bus_settings
from bastion.errors import ConfigError, FormatError
from bastion.limits import BUS_CHANNEL_MAX_SIZE
from bastion.server.bus_nats import (
    NatsBus,
    channel_of,
    check_nats_url,
    check_prefix,
    redact_url,
    subject_of,
)
from bastion.server.settings import ServerSettings

TOKEN = re.compile(r"_|(?:[A-Za-z0-9-]|_[0-9A-F]{2})+")

# -- refusals ------------------------------------------------------------------------------

BAD_SUBJECTS = [
    ("other.device.x", "not under"),  # another prefix
    ("bastion", "not under"),
    ("bastion.", "not under"),
    ("bastionx.device", "not under"),
    ("bastion.device._2e", "not an escaped"),  # lower-case hex
    ("bastion.device._G1", "not an escaped"),
    ("bastion.device.x_2", "not an escaped"),  # truncated escape
    ("bastion.device.a*", "not an escaped"),
    ("bastion.device.>", "not an escaped"),
    ("bastion.device._FF", "does not escape UTF-8"),
    ("bastion.device._41", "canonical"),  # "A" escaped although it is safe
    ("bastion.device..x", "canonical"),  # an empty token is "_", never ""
    ("bastion.device._2D", "canonical"),  # "-" is safe
]


@pytest.mark.parametrize(("subject", "why"), BAD_SUBJECTS)
def test_foreign_subjects_are_refused(subject: str, why: str) -> None:
    with pytest.raises(FormatError, match=why):
        channel_of("bastion", subject)


BAD_PREFIXES = ["", ".", "a.", ".a", "a..b", "a.*", "a.>", "a b", "a\r\nPUB x", "é", "x" * 65]


@pytest.mark.parametrize("prefix", BAD_PREFIXES)
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ConfigError, match="NATS subject prefix"):
        check_prefix(prefix)
    with pytest.raises(ConfigError):
        NatsBus("nats://127.0.0.1:4222", prefix)


BAD_URLS = [
    ("127.0.0.1:4222", "expected nats://"),  # no scheme
    ("http://127.0.0.1:4222", "expected nats://"),
    ("ws://127.0.0.1:4222", "expected nats://"),
    ("nats://:4222", "expected nats://"),  # no host
    ("nats://nats.example.org:4222", "refusing plain nats://"),
    ("nats://10.0.0.5:4222", "refusing plain nats://"),
    ("nats://user:secret@nats.example.org:4222", "refusing plain nats://"),
    ("nats://127.0.0.1:4222/bus", "only scheme, host and port"),
    ("nats://127.0.0.1:4222?x=1", "only scheme, host and port"),
    ("nats://127.0.0.1:4222#x", "only scheme, host and port"),
    ("nats://127.0.0.1:0", "only scheme, host and port"),
    ("nats://127.0.0.1:99999", "out of range"),
    ("tls://user:secret@[::1:4222", "NATS URL"),  # malformed IPv6 literal
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_bad_urls_are_refused_without_their_secrets(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(why)) as caught:
        check_nats_url(url)
    assert "secret" not in str(caught.value)
    with pytest.raises(ConfigError):
        NatsBus(url)


def test_a_nats_bus_without_a_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs nats_url"):
        ServerSettings(data_dir=tmp_path, bus_backend="nats").resolved_bus_backend()


@pytest.mark.parametrize("value", ["nats", "kafka", "", "pg", "postgresql"])
def test_bad_bus_flags_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="--bus"):
        bus_settings(value)


def test_the_settings_repr_hides_the_nats_url(tmp_path: Path) -> None:
    settings = ServerSettings(data_dir=tmp_path, nats_url="tls://u:hunter2@nats.example.org:4222")
    assert "hunter2" not in repr(settings)


# -- what is accepted ----------------------------------------------------------------------

SUBJECTS = [
    ("device:0f3a9c", "bastion.device.0f3a9c"),
    ("org:1:fleet:2:device:3", "bastion.org.1.fleet.2.device.3"),
    ("device:a.b", "bastion.device.a_2Eb"),  # a dot cannot add a token
    ("device:*", "bastion.device._2A"),  # nor a wildcard
    ("device:>", "bastion.device._3E"),
    ("device:x y\r\nPUB z 1", "bastion.device.x_20y_0D_0APUB_20z_201"),  # nor a command
    ("device:_2E", "bastion.device._5F2E"),  # the escape character is escaped
    ("device::", "bastion.device._._"),  # empty parts
    ("é", "bastion._C3_A9"),
]


@pytest.mark.parametrize(("channel", "subject"), SUBJECTS)
def test_subjects_of_channels(channel: str, subject: str) -> None:
    assert subject_of("bastion", channel) == subject
    assert channel_of("bastion", subject) == channel


@given(st.text(min_size=1, max_size=BUS_CHANNEL_MAX_SIZE // 4))
def test_every_channel_is_one_safe_subject(channel: str) -> None:
    subject = subject_of("tenant-1.bastion", channel)
    tokens = subject.split(".")
    assert tokens[:2] == ["tenant-1", "bastion"]
    assert all(TOKEN.fullmatch(t) for t in tokens[2:]), subject
    assert len(tokens) - 2 == channel.count(":") + 1  # only ':' makes a token
    assert channel_of("tenant-1.bastion", subject) == channel  # injective


def test_good_urls_and_their_redaction() -> None:
    for url in (
        "nats://127.0.0.1:4222",
        "nats://localhost:4222",
        "nats://[::1]:4222",
        "nats://127.0.0.1",
        "tls://nats.example.org:4222",
        "tls://user:secret@nats.example.org:4222",
    ):
        assert check_nats_url(url) == url
    assert redact_url("tls://user:secret@nats.example.org:4222") == "tls://nats.example.org:4222"
    assert redact_url("nats://tok@127.0.0.1") == "nats://127.0.0.1"


def test_the_bus_setting_follows_the_url(tmp_path: Path) -> None:
    pg = "postgresql://bastion@db.example.org/bastion"
    url = "nats://127.0.0.1:4222"
    assert ServerSettings(data_dir=tmp_path, nats_url=url).resolved_bus_backend() == "nats"
    on_pg = ServerSettings(data_dir=tmp_path, database_url=pg, nats_url=url)
    assert on_pg.resolved_bus_backend() == "nats"
    forced = ServerSettings(
        data_dir=tmp_path, database_url=pg, nats_url=url, bus_backend="postgres"
    )
    assert forced.resolved_bus_backend() == "postgres"
    assert bus_settings(url) == {"bus_backend": "nats", "nats_url": url}
    assert bus_settings("postgres") == {"bus_backend": "postgres"}
    assert bus_settings(None) == {}
