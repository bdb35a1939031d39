"""The device answer cache's rules, without a database (docs/adr/0044-device-answer-cache.md,
docs/adr/0045-presence-written-behind.md).

Negative table first: what must never be served or kept.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from bastion.server.answers import (
    ANSWER_TTL,
    EVERY_DEVICE,
    PRESENCE_SECONDS,
    WATCHED,
    Answer,
    AnswerCache,
    credential_key,
    deadline,
    missing_triggers,
    parse_seen,
    seen_payload,
    utc,
)

KEY = credential_key(b"Bearer bst_dev_one")
OTHER = credential_key(b"Bearer bst_dev_two")
PATH = "/v1/device/config"
NOW = 1_000_000.0


def _answer(
    device: str = "d1",
    until: float = NOW + 10,
    body: bytes = b"{}",
    seen_at: float = NOW,
    render: Callable[[dt.datetime], bytes] | None = None,
) -> Answer:
    return Answer(
        body=body,
        device_id=device,
        rate_key=f"device:{device}",
        until=until,
        seen_at=seen_at,
        render=render,
    )


def _shows(at: dt.datetime) -> bytes:
    """A body that shows ``at`` as the device's last_seen_at."""
    return f'{{"last_seen_at":"{at.isoformat()}"}}'.encode()


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


@pytest.mark.parametrize(
    "changed", ["its device", "every device", "its device's presence (shown in the body)"]
)
def test_a_change_between_ticket_and_put_refuses_the_answer(changed: str) -> None:
    cache = _online()
    _kept(cache, OTHER, _answer("d1"))  # the device has answers: its presence is tracked
    ticket = cache.ticket()
    answer = _answer()
    if changed.startswith("its device's presence"):
        cache.seen("d1", utc(NOW + 1))  # a fill under way may show the old last_seen_at
        answer = _answer(render=_shows)
    else:
        cache.invalidate("d1" if changed == "its device" else EVERY_DEVICE)
    assert not cache.put(ticket, KEY, PATH, answer)
    assert cache.get(KEY, PATH, NOW) is None and cache.refused == 1


@pytest.mark.parametrize("had_answers", [True, False])
def test_a_presence_move_keeps_an_answer_that_does_not_show_it_but_not_its_time(
    had_answers: bool,
) -> None:
    """A ``seen:`` between ticket and put leaves the body right when it does not show
    ``last_seen_at`` (a config): it is kept, but the time it was read with is not taken
    as the device's presence, which would make a hit record presence again at once."""
    cache = _online()
    if had_answers:
        _kept(cache, OTHER, _answer("d1", until=NOW + 1000, seen_at=NOW - 50))
    ticket = cache.ticket()
    cache.seen("d1", utc(NOW + 1))  # written by a heartbeat while the config was read
    assert cache.put(ticket, KEY, PATH, _answer(until=NOW + 1000, seen_at=NOW - 59))
    assert cache.refused == 0
    assert cache.get(KEY, PATH, NOW + 2) is not None
    # with its answers kept before, the device's presence is the written one: not due;
    # with none, nothing is known and the hit records it (a write the rule makes a no-op)
    assert cache.take_due() == ({} if had_answers else {"d1": utc(NOW + 2)})


def test_a_presence_move_after_the_ticket_but_of_another_device_refuses_nothing() -> None:
    cache = _online()
    ticket = cache.ticket()
    cache.seen("d2", utc(NOW))
    assert cache.put(ticket, KEY, PATH, _answer("d1", render=_shows))


def test_a_full_presence_move_record_counts_as_every_device_moved() -> None:
    cache = AnswerCache(max_entries=2)
    cache.set_online(True)
    ticket = cache.ticket()
    for device in ("d2", "d3", "d4"):  # more moved devices than the record keeps
        cache.seen(device, utc(NOW))
    assert not cache.put(ticket, KEY, PATH, _answer("d1", render=_shows))
    assert cache.put(ticket, OTHER, PATH, _answer("d1"))  # a body without it is still right


def test_another_devices_change_does_not_refuse_the_answer() -> None:
    cache = _online()
    ticket = cache.ticket()
    cache.invalidate("d2")
    cache.seen("d3", utc(NOW))
    assert cache.put(ticket, KEY, PATH, _answer("d1"))


def test_a_bounded_change_record_counts_as_an_emptying_when_full() -> None:
    cache = AnswerCache(max_entries=2)
    cache.set_online(True)
    ticket = cache.ticket()
    for device in ("d2", "d3", "d4"):  # more changed devices than the record keeps
        cache.invalidate(device)
    assert not cache.put(ticket, KEY, PATH, _answer("d1"))  # cannot tell: refused


def test_a_hit_records_presence_once_it_is_due_and_only_then() -> None:
    cache = _online()
    _kept(cache, answer=_answer(until=NOW + 1000, seen_at=NOW - 50))
    assert cache.get(KEY, PATH, NOW + 9.999) is not None
    assert cache.take_due() == {}  # not due yet: nothing to write
    at = utc(NOW + 10)
    assert cache.get(KEY, PATH, NOW + 10, at) is not None  # 60 s after: a hit that records
    assert cache.due == 1 and cache.presence_recorded == 1
    assert cache.get(KEY, PATH, NOW + 69.9) is not None  # recorded: not again this minute
    assert cache.take_due() == {"d1": at} and cache.due == 0
    assert cache.take_due() == {}
    assert cache.get(KEY, PATH, NOW + 70) is not None
    assert cache.take_due() == {"d1": utc(NOW + 70)}  # without a time: the one of now


def test_presence_written_elsewhere_moves_the_deadline_and_is_not_recorded_again() -> None:
    cache = _online()
    _kept(cache, answer=_answer(until=NOW + 1000, seen_at=NOW - 50))
    cache.seen("d1", utc(NOW + 5))  # another process wrote it
    assert cache.get(KEY, PATH, NOW + 64.9) is not None
    assert cache.take_due() == {}
    cache.seen("d1", utc(NOW))  # an older write tells nothing new
    assert cache.get(KEY, PATH, NOW + 64.9) is not None and cache.take_due() == {}


def test_the_stored_presence_wins_over_a_hits_own_record() -> None:
    """Another process wrote the minute's presence first (its time is earlier): this
    process's write will not happen, so its answers show the stored time."""
    cache = _online()
    shown = utc(NOW - 50)
    device = _answer(body=_shows(shown), until=NOW + 1000, seen_at=NOW - 50, render=_shows)
    assert cache.put(cache.ticket(), KEY, "/v1/device", device)
    kept = cache.get(KEY, "/v1/device", NOW + 12)
    assert kept is not None and kept.body == _shows(utc(NOW + 12))  # recorded here
    cache.seen("d1", utc(NOW + 11))  # stored by the other process, a second earlier
    kept = cache.get(KEY, "/v1/device", NOW + 13)
    assert kept is not None and kept.body == _shows(utc(NOW + 11))
    cache.seen("d1", utc(NOW + 5))  # confirmed now: an older write tells nothing new
    kept = cache.get(KEY, "/v1/device", NOW + 14)
    assert kept is not None and kept.body == _shows(utc(NOW + 11))
    assert cache.get(KEY, "/v1/device", NOW + 70.999) is not None
    assert cache.take_due() == {"d1": utc(NOW + 12)}  # written as recorded: the rule skips it
    assert cache.get(KEY, "/v1/device", NOW + 71) is not None and cache.due == 1


def test_the_full_paths_presence_is_recorded_and_shown_until_the_database_says_otherwise() -> None:
    cache = _online()
    at = utc(NOW)
    cache.record_due("d1", at)  # the full path, before it stores its answer
    device = _answer(body=_shows(at), until=NOW + 1000, seen_at=NOW, render=_shows)
    assert cache.put(cache.ticket(), KEY, "/v1/device", device)
    assert cache.take_due() == {"d1": at}
    cache.seen("d1", utc(NOW - 1))  # another process stored the minute's presence first
    kept = cache.get(KEY, "/v1/device", NOW + 1)
    assert kept is not None and kept.body == _shows(utc(NOW - 1))


def test_no_writer_no_presence_record() -> None:
    """Without a running writer the full path writes presence itself."""
    from bastion.server.answers import Listener

    listener = Listener(_online(), "postgresql://bastion@127.0.0.1/none")
    assert not listener.record_presence("d1", utc(NOW))
    assert listener.cache.due == 0


def test_presence_that_could_not_be_written_is_kept_and_the_newest_wins() -> None:
    cache = _online()
    cache.return_due({"d1": utc(NOW), "d2": utc(NOW + 3)})
    cache.return_due({"d1": utc(NOW - 10), "d2": utc(NOW + 4)})
    assert cache.take_due() == {"d1": utc(NOW), "d2": utc(NOW + 4)}
    cache.return_due({"d1": utc(NOW)})
    cache.set_online(False)  # the cache going off does not forget that a device was seen
    assert cache.take_due() == {"d1": utc(NOW)}


def test_a_presence_write_keeps_the_answers_and_renders_again_those_that_show_it() -> None:
    cache = _online()
    shown = utc(NOW)
    _kept(cache, KEY, _answer(body=b"config", until=NOW + 1000))
    device = _answer(body=_shows(shown), until=NOW + 1000, render=_shows)
    assert cache.put(cache.ticket(), KEY, "/v1/device", device)
    kept = cache.get(KEY, "/v1/device", NOW + 1)
    assert kept is not None and kept.body == _shows(shown) and cache.rendered == 0
    cache.seen("d1", utc(NOW + 5))  # written elsewhere
    kept = cache.get(KEY, "/v1/device", NOW + 6)
    assert kept is not None and kept.body == _shows(utc(NOW + 5)) and cache.rendered == 1
    kept = cache.get(KEY, "/v1/device", NOW + 7)  # the new bytes are kept: no second render
    assert kept is not None and kept.body == _shows(utc(NOW + 5)) and cache.rendered == 1
    config = cache.get(KEY, PATH, NOW + 7)
    assert config is not None and config.body == b"config"
    at = utc(NOW + 70)  # due: this hit is the presence, and the body shows it
    kept = cache.get(KEY, "/v1/device", NOW + 70, at)
    assert kept is not None and kept.body == _shows(at) and cache.take_due() == {"d1": at}
    cache.seen("d9", utc(NOW))  # a device with no answers here: nothing is recorded for it
    assert "d9" not in cache._seen


def test_missing_or_disabled_triggers_are_named() -> None:
    every = [(t, g) for t in WATCHED for g in ("bastion_answers", "bastion_answers_truncate")]
    assert missing_triggers(every) == []
    assert missing_triggers([*every, ("other", "bastion_answers")]) == []
    assert missing_triggers([p for p in every if p != ("fleets", "bastion_answers_truncate")]) == [
        "fleets.bastion_answers_truncate"
    ]
    assert len(missing_triggers([])) == 2 * len(WATCHED)


@pytest.mark.parametrize(
    "payload",
    ["seen:", "seen:d1", "seen::2026-12-07T10:00:00+00:00", "seen:d1:", "seen:d1:yesterday"],
)
def test_a_malformed_presence_payload_is_refused(payload: str) -> None:
    assert parse_seen(payload) is None


def test_a_presence_payload_round_trips() -> None:
    at = dt.datetime(2026, 12, 7, 10, 0, 1, 250000, tzinfo=dt.UTC)
    assert parse_seen(seen_payload("d1", at)) == ("d1", at)
    # PostgreSQL's to_jsonb(timestamptz) text, as the trigger sends it
    assert parse_seen("seen:d1:2026-12-07T10:00:01.25+00:00") == ("d1", at)
    assert parse_seen("seen:d1:2026-12-07T11:00:01.25+01:00") == ("d1", at)
    naive = parse_seen("seen:d1:2026-12-07T10:00:01.25")  # a naive time is UTC, as stored
    assert naive == ("d1", at) and naive[1].tzinfo is not None


def test_the_presence_interval_is_the_devices_last_seen_resolution() -> None:
    from bastion.server.devices.service import LAST_SEEN_RESOLUTION

    assert LAST_SEEN_RESOLUTION.total_seconds() == PRESENCE_SECONDS


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


def test_a_full_cache_evicts_the_oldest_stored_and_stays_bounded() -> None:
    cache = AnswerCache(max_entries=3)
    cache.set_online(True)
    for i in range(10):
        _kept(cache, credential_key(f"k{i}".encode()), _answer(f"d{i}"))
        assert len(cache) <= 3
    assert cache.evicted == 7
    for i in range(7):  # evicted, and nothing of their devices is left behind
        assert cache.get(credential_key(f"k{i}".encode()), PATH, NOW) is None
        assert f"d{i}" not in cache._by_device and f"d{i}" not in cache._seen
    for i in (7, 8, 9):
        assert cache.get(credential_key(f"k{i}".encode()), PATH, NOW) is not None
    _kept(cache, credential_key(b"k7"), _answer("d7"))  # stored again: now the newest
    _kept(cache, credential_key(b"k10"), _answer("d10"))
    assert cache.get(credential_key(b"k8"), PATH, NOW) is None  # the oldest went
    assert cache.get(credential_key(b"k7"), PATH, NOW) is not None
    with pytest.raises(ValueError):
        AnswerCache(max_entries=0)


def test_the_default_size_is_the_servers_default() -> None:
    from bastion.server.answers import ANSWERS_MAX
    from bastion.server.settings import ServerSettings

    assert ServerSettings.model_fields["device_answer_cache_entries"].default == ANSWERS_MAX


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


def test_an_updated_device_whose_only_change_is_last_seen_is_a_presence_write() -> None:
    from sqlalchemy.orm.attributes import set_committed_value

    from bastion.server.answers import touched_by_row
    from bastion.server.devices.models import Device

    at = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)
    device = Device()
    loaded = {"id": "d1", "status": "active", "last_seen_at": at - dt.timedelta(minutes=2)}
    for name, value in loaded.items():
        set_committed_value(device, name, value)  # as loaded from the database
    device.last_seen_at = at
    assert touched_by_row(device, updated=True) == seen_payload("d1", at)
    device.status = "revoked"  # anything else as well: the device's answers go
    assert touched_by_row(device, updated=True) == "d1"


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
