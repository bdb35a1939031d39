"""``GET /v1/device``'s kept body shown with another ``last_seen_at`` (ADR 0045): byte
for byte what the route's model dumps, or nothing kept when the value cannot be found."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import TypeAdapter

from bastion.server.devices.schemas import DeviceOut
from bastion.server.hotpath import presence_renderer

ADAPTER = TypeAdapter(DeviceOut)
CREATED = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def _device(**fields: object) -> DeviceOut:
    values: dict[str, object] = {
        "id": "d" * 32,
        "fleet_id": "f" * 32,
        "serial": "cam-1",
        "status": "active",
        "cert_serial": "01ab",
        "api_key_prefix": "bst_dev_abc",
        "os_version": "1.2",
        "agent_version": None,
        "note": None,
        "created_at": CREATED,
        "last_seen_at": CREATED,
        "revoked_at": None,
        "ek_trust": "any",
    }
    values.update(fields)
    return DeviceOut(**values)  # type: ignore[arg-type]


def test_a_note_that_looks_like_the_marker_is_not_kept() -> None:
    """The marker found twice: the body cannot be cut safely, so no renderer."""
    assert presence_renderer(ADAPTER, _device(note="0001-01-01T00:00:00Z")) is None


@pytest.mark.parametrize(
    "at",
    [
        dt.datetime(2026, 12, 7, 12, 0, 1, 123456, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
    ],
)
@pytest.mark.parametrize("shown", [CREATED, None])
def test_the_rendered_body_is_what_the_model_dumps(at: dt.datetime, shown: object) -> None:
    device = _device(last_seen_at=shown, note='say "hi", 0001')
    render = presence_renderer(ADAPTER, device)
    assert render is not None
    expected = ADAPTER.dump_json(device.model_copy(update={"last_seen_at": at}), by_alias=True)
    assert render(at) == expected
