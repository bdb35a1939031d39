"""``DeviceRow`` (the heartbeat's plain row) and ``DeviceOut`` (what a device reads) name
the same device columns: ``DeviceOut.of`` reads each of its fields from either by name."""

from __future__ import annotations

import dataclasses
import datetime as dt

from bastion.server.devices.models import Device
from bastion.server.devices.repository import DeviceRow
from bastion.server.devices.schemas import DeviceOut


def test_the_rows_device_columns_are_the_models_fields_in_order() -> None:
    fields = [f.name for f in dataclasses.fields(DeviceRow)]
    assert fields[: len(DeviceOut.model_fields)] == list(DeviceOut.model_fields)
    assert fields[len(DeviceOut.model_fields) :] == ["org_id", "fleet_config"]
    columns = set(Device.__table__.columns.keys())
    assert set(DeviceOut.model_fields) <= columns


def test_of_reads_every_field_from_a_plain_row() -> None:
    at = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    values = {
        "id": "d" * 32,
        "fleet_id": "f" * 32,
        "serial": "sn-1",
        "status": "active",
        "cert_serial": "01",
        "api_key_prefix": "bst_dev_ab",
        "os_version": "1.0",
        "agent_version": None,
        "note": "lab",
        "created_at": at,
        "last_seen_at": at,
        "revoked_at": None,
        "ek_trust": "certified",
    }
    row = DeviceRow(**values, org_id="o" * 32, fleet_config="{}")
    assert DeviceOut.of(row).model_dump() == values
