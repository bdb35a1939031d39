"""The device answer cache's rules, without a database (docs/adr/0044-device-answer-cache.md).

Negative table first: what must never be served or kept.
"""

from __future__ import annotations

import datetime as dt

import pytest

from bastion.server.answers import (
    ANSWER_TTL,
    EVERY_DEVICE,
    Answer,
    AnswerCache,
    credential_key,
    deadline,
)

KEY = credential_key(b"Bearer bst_dev_one")
OTHER = credential_key(b"Bearer bst_dev_two")
PATH = "/v1/device/config"
NOW = 1_000_000.0


def _answer(device: str = "d1", until: float = NOW + 10, body: bytes = b"{}") -> Answer:
    return Answer(body=body, device_id=device, rate_key=f"device:{device}", until=until)


def _online() -> AnswerCache:
    cache = AnswerCache()
    cache.set_online(True)
    return cache


def _kept(cache: AnswerCache, key: bytes = KEY, answer: Answer | None = None) -> None:
    assert cache.put(cache.ticket(), key, PATH, answer or _answer())


def test_off_serves_and_keeps_nothing() -> None:
    cache = AnswerCache()
    assert not cache.online and cache.ticket() is None
    assert not cache.put(None, KEY, PATH, _answer())
    assert not cache.put(0, KEY, PATH, _answer())  # an invented ticket does not help
    assert cache.get(KEY, PATH, NOW) is None and len(cache) == 0


def test_going_off_empties_and_voids_tickets() -> None:
    cache = _online()
    _kept(cache)
    ticket = cache.ticket()
    cache.set_online(False)
    assert cache.get(KEY, PATH, NOW) is None
    cache.set_online(True)  # back: empty, and a ticket from before is void
    assert len(cache) == 0
    assert not cache.put(ticket, KEY, PATH, _answer())


@pytest.mark.parametrize("changed", ["the same device", "another device", "every device"])
def test_an_invalidation_between_ticket_and_put_refuses_the_answer(changed: str) -> None:
    cache = _online()
    ticket = cache.ticket()
    cache.invalidate({"the same device": "d1", "another device": "d2"}.get(changed, EVERY_DEVICE))
    assert not cache.put(ticket, KEY, PATH, _answer())
    assert cache.get(KEY, PATH, NOW) is None and cache.refused == 1


def test_an_answer_at_or_past_its_deadline_is_a_miss() -> None:
    cache = _online()
    _kept(cache, answer=_answer(until=NOW + 5))
    assert cache.get(KEY, PATH, NOW + 4.999) is not None
    assert cache.get(KEY, PATH, NOW + 5) is None
    assert cache.get(KEY, PATH, NOW + 60) is None


def test_invalidating_a_device_drops_only_its_answers() -> None:
    cache = _online()
    _kept(cache, KEY, _answer("d1", body=b"one"))
    _kept(cache, OTHER, _answer("d2", body=b"two"))
    cache.invalidate("d1")
    assert cache.get(KEY, PATH, NOW) is None
    kept = cache.get(OTHER, PATH, NOW)
    assert kept is not None and kept.body == b"two"
    cache.invalidate(EVERY_DEVICE)
    assert cache.get(OTHER, PATH, NOW) is None and len(cache) == 0


def test_keys_and_paths_are_separate_entries() -> None:
    cache = _online()
    _kept(cache, KEY, _answer(body=b"config"))
    assert cache.get(KEY, "/v1/device", NOW) is None
    assert cache.get(OTHER, PATH, NOW) is None
    kept = cache.get(KEY, PATH, NOW)
    assert kept is not None and kept.body == b"config"
    assert (cache.hits, cache.misses) == (1, 2)


def test_a_full_cache_empties_and_stays_bounded() -> None:
    cache = AnswerCache(max_entries=3)
    cache.set_online(True)
    for i in range(10):
        _kept(cache, credential_key(f"k{i}".encode()), _answer(f"d{i}"))
        assert len(cache) <= 3
    assert cache.get(credential_key(b"k9"), PATH, NOW) is not None
    with pytest.raises(ValueError):
        AnswerCache(max_entries=0)


def test_the_credential_key_is_the_headers_sha256_not_the_header() -> None:
    key = credential_key(b"Bearer bst_dev_secret")
    assert len(key) == 32 and b"secret" not in key
    assert key != credential_key(b"Bearer bst_dev_secreT")


def test_the_deadline_is_the_earliest_bound_and_never_past_the_ttl() -> None:
    stored = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
    base = stored.timestamp()
    assert deadline(stored) == base + ANSWER_TTL
    assert deadline(stored, None, stored + dt.timedelta(seconds=3)) == base + 3
    assert deadline(stored, stored + dt.timedelta(hours=1)) == base + ANSWER_TTL
    naive = stored.replace(tzinfo=None) + dt.timedelta(seconds=7)  # SQLite: UTC, naive
    assert deadline(stored, naive) == base + 7


# --- what this process's own writes drop (Listener.watch_writes) -------------------------


def _models() -> dict[str, type]:
    import bastion.server.attestation.models
    import bastion.server.devices.models
    import bastion.server.orgs.models
    import bastion.server.releases.models
    import bastion.server.rollouts.models  # noqa: F401 - the watched tables' models
    from bastion.server.db.base import Base

    return {m.local_table.name: m.class_ for m in Base.registry.mappers}  # type: ignore[attr-defined]


def test_every_watched_device_column_is_the_models_attribute_of_that_name() -> None:
    from bastion.server.answers import WATCHED

    models = _models()
    for table, column in WATCHED.items():
        assert table in models, table
        if column is not None:
            mapper = models[table].__mapper__  # type: ignore[attr-defined]
            prop = mapper.get_property_by_column(mapper.local_table.c[column])
            assert prop.key == column, table


def test_a_flushed_row_names_its_device_or_every_device() -> None:
    from bastion.server.answers import touched_by_row
    from bastion.server.attestation.models import AttestationVerdict
    from bastion.server.devices.models import Device, DeviceEnvVar, DeviceRecord
    from bastion.server.orgs.models import Fleet

    assert touched_by_row(Device(id="d1")) == "d1"
    assert touched_by_row(DeviceEnvVar(device_id="d2", name="A", value="b")) == "d2"
    assert touched_by_row(AttestationVerdict(device_id="d3")) == "d3"
    assert touched_by_row(Fleet(id="f1")) == EVERY_DEVICE
    assert touched_by_row(Device()) == EVERY_DEVICE  # its device is not known: all
    assert touched_by_row(DeviceRecord(device_id="d4")) is None  # not an answer's input


def test_an_orm_statement_names_its_devices_or_every_device() -> None:
    from sqlalchemy import delete, insert, or_, update

    from bastion.server.answers import touched_by_statement
    from bastion.server.attestation.models import AttestationVerdict
    from bastion.server.devices.models import DeviceEnvVar, DeviceRecord
    from bastion.server.orgs.models import Fleet
    from bastion.server.rollouts.models import RolloutDevice

    env = DeviceEnvVar
    named = delete(env).where(env.device_id == "d1", env.name == "A")
    assert touched_by_statement(named, {}) == {"d1"}
    kept_log = update(AttestationVerdict).where(
        AttestationVerdict.device_id == "d2", AttestationVerdict.id != 5
    )
    assert touched_by_statement(kept_log.values(eventlog=None), {}) == {"d2"}
    either = delete(env).where(or_(env.device_id == "a", env.device_id == "b"))
    assert touched_by_statement(either, {}) == {EVERY_DEVICE}
    assert touched_by_statement(delete(env), {}) == {EVERY_DEVICE}
    rows = [{"device_id": "a", "rollout_id": "r"}, {"device_id": "b", "rollout_id": "r"}]
    assert touched_by_statement(insert(RolloutDevice), rows) == {"a", "b"}
    assert touched_by_statement(insert(RolloutDevice), [*rows, {"rollout_id": "r"}]) == {
        EVERY_DEVICE
    }
    assert touched_by_statement(update(Fleet).values(config="{}"), {}) == {EVERY_DEVICE}
    assert touched_by_statement(delete(DeviceRecord), {}) == set()
