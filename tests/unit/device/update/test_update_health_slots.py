"""Health specifications and checks; the boot choice over ESP entries (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests import updatekit as uk

from bastion.device.update import health, slots
from bastion.errors import FormatError, LimitError
from bastion.formats import bls


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"required": [{"command": []}]}, FormatError),
        ({"required": [{"command": ["x"], "unit": "y"}]}, FormatError),
        ({"required": [{"unit": "a.service", "status": 200}]}, FormatError),
        ({"required": [{"http": "ftp://x/"}]}, FormatError),
        ({"required": [{"command": ["x"], "timeout": 0}]}, LimitError),
        ({"required": [{"command": ["x"], "timeout": 10**6}]}, LimitError),
        ({"required": [{"unit": "u"}] * 65}, LimitError),
        ({"required": "x"}, FormatError),
        ({"other": []}, FormatError),
        ({"time_limit": True}, FormatError),
    ],
)
def test_bad_specs_refused(spec: dict, error: type[Exception]) -> None:  # type: ignore[type-arg]
    with pytest.raises(error):
        health.parse_spec(spec)


def test_required_fails_wanted_warns() -> None:
    spec = health.parse_spec(
        {"required": [{"command": ["ok"]}, {"unit": "bad.service"}], "wanted": [{"unit": "w"}]}
    )
    result = health.run(spec, lambda c: None if c.target == ("ok",) else "down")
    assert not result.ok
    assert result.failures == ("unit bad.service: down",)
    assert result.warnings == ("unit w: down",)


def test_time_limit_fails_checks_not_run() -> None:
    ticks = iter([0.0, 0.0, 500.0, 500.0])
    spec = health.parse_spec({"time_limit": 10, "required": [{"unit": "a"}, {"unit": "b"}]})
    result = health.run(spec, lambda _c: None, monotonic=lambda: next(ticks))
    assert result.failures == ("unit b: not run, time limit 10 s spent",)


def test_merge_keeps_both_and_the_smaller_limit() -> None:
    a = health.parse_spec({"time_limit": 50, "required": [{"unit": "a"}]})
    b = health.parse_spec({"time_limit": 20, "wanted": [{"unit": "b"}]})
    merged = a.merged(b)
    assert (len(merged.required), len(merged.wanted), merged.time_limit) == (1, 1, 20)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[uk.RangeServer]:
    (tmp_path / "healthz").write_text("ok")
    srv = uk.RangeServer(tmp_path)
    yield srv
    srv.close()


def test_real_prober_runs_commands_and_probes(server: uk.RangeServer) -> None:
    prober = health.Prober()
    spec = health.parse_spec(
        {
            "required": [
                {"command": ["true"]},
                {"http": f"{server.url}/healthz", "status": 200, "timeout": 5},
            ],
            "wanted": [{"command": ["false"]}, {"http": f"{server.url}/missing"}],
        }
    )
    result = health.run(spec, prober)
    assert result.ok, result.failures
    assert result.warnings[0] == "command false: exited 1"
    assert "http" in result.warnings[1]


def _entry(filename: str) -> slots.Entry:
    name = bls.parse(filename)
    gen, slot = name.name.split("-")[1:]
    return slots.Entry(filename, name, int(gen), slot)


def _rec(slot: str, gen: int, svn: int, state: str = "committed") -> slots.SlotRecord:
    return slots.SlotRecord(slot, "1", svn, "", f"uki-{slot}", "", 4096, gen, state)


def test_choose_follows_systemd_boot_order_and_svn() -> None:
    a, b = _entry("bastion-1-a.efi"), _entry("bastion-2-b+2-1.efi")
    digests = {a.filename: "uki-a", b.filename: "uki-b"}
    records = {"a": _rec("a", 1, 1), "b": _rec("b", 2, 2, "trial")}
    assert slots.choose([a, b], records, digests, 1) == b  # newest first
    bad = _entry("bastion-2-b+0-3.efi")
    assert slots.choose([a, bad], records, {**digests, bad.filename: "uki-b"}, 1) == a
    # a slot whose SVN is below the fuses is never chosen
    assert slots.choose([a, bad], records, {**digests, bad.filename: "uki-b"}, 2) == bad
    assert slots.choose([a], records, digests, 2) is None
    # a UKI that is not the recorded one, or a slot being installed, is skipped
    assert slots.choose([a, b], records, {**digests, b.filename: "evil"}, 1) == a
    installing = {**records, "b": _rec("b", 2, 2, "installing")}
    assert slots.choose([a, b], installing, digests, 1) == a
