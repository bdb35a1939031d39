"""Organisation membership needs consent (hardening item 9).

Owners invite e-mail addresses; the holder accepts or declines; answers do not reveal
whether an address has an account; members can leave, the last owner cannot.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bastion.errors import ConflictError
from bastion.server.orgs import invitations

PASSWORD = "correct horse battery"


@pytest.fixture
def world(api) -> dict[str, Any]:
    boss = api.user_and_login("boss@example.org")
    org = api.client.post("/v1/orgs", headers=boss, json={"name": "acme"}).json()["id"]
    fleet = api.client.post(f"/v1/orgs/{org}/fleets", headers=boss, json={"name": "pumps"})
    return {"api": api, "boss": boss, "org": org, "fleet": fleet.json()["id"]}


def _invite(w: dict[str, Any], email: str, headers: Any = None, **extra: Any) -> Any:
    return w["api"].client.post(
        f"/v1/orgs/{w['org']}/invitations",
        headers=headers or w["boss"],
        json={"email": email, **extra},
    )


def _answer(w: dict[str, Any], invitation_id: str, headers: Any, verb: str = "accept") -> Any:
    return w["api"].client.post(f"/v1/me/invitations/{invitation_id}/{verb}", headers=headers)


def _orgs(w: dict[str, Any], headers: Any) -> list[str]:
    return [o["name"] for o in w["api"].client.get("/v1/orgs", headers=headers).json()]


def test_invite_accept_makes_a_member(world, clock) -> None:
    api = world["api"]
    alice = api.user_and_login("alice@example.org")
    made = _invite(world, "Alice@Example.org", role="member")
    assert made.status_code == 201, made.text
    invitation = made.json()
    assert invitation["state"] == "pending" and invitation["email"] == "alice@example.org"
    # not a member until she says yes
    assert _orgs(world, alice) == []
    mine = api.client.get("/v1/me/invitations", headers=alice).json()
    assert [(i["id"], i["org_name"]) for i in mine] == [(invitation["id"], "acme")]
    sent = api.client.get(f"/v1/orgs/{world['org']}/invitations", headers=world["boss"]).json()
    assert [i["id"] for i in sent] == [invitation["id"]]
    accepted = _answer(world, invitation["id"], alice)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "accepted"
    assert _orgs(world, alice) == ["acme"]
    assert api.client.get("/v1/me/invitations", headers=alice).json() == []
    events = [
        e["event"]
        for e in api.client.get(f"/v1/orgs/{world['org']}/audit", headers=world["boss"]).json()
    ]
    assert {"org.invite", "org.invitation_accept"} <= set(events)


def test_invitation_to_an_address_without_account_waits_for_it(world) -> None:
    api = world["api"]
    invitation = _invite(world, "later@example.org").json()
    api.user("later@example.org")
    later = api.login("later@example.org")
    assert [i["id"] for i in api.client.get("/v1/me/invitations", headers=later).json()] == [
        invitation["id"]
    ]
    assert _answer(world, invitation["id"], later, "decline").json()["state"] == "declined"
    assert _orgs(world, later) == []


def _setup_case(w: dict[str, Any], case: str, clock: Any) -> tuple[Any, str]:
    """(headers of whoever answers, invitation id) for one negative case."""
    api = w["api"]
    invitee = api.user_and_login("invitee@example.org")
    invitation = _invite(w, "invitee@example.org").json()["id"]
    if case == "wrong user":
        return api.user_and_login("mallory@example.org"), invitation
    if case == "expired":
        clock.advance(7 * 86400 + 1)
        return api.login("invitee@example.org"), invitation  # the old session expired too
    elif case == "declined then accepted":
        assert _answer(w, invitation, invitee, "decline").status_code == 200
    elif case == "accepted twice":
        assert _answer(w, invitation, invitee).status_code == 200
    elif case == "revoked":
        revoked = api.client.delete(
            f"/v1/orgs/{w['org']}/invitations/{invitation}", headers=w["boss"]
        )
        assert revoked.status_code == 204
    elif case == "read-scoped token":
        pat = api.client.post(
            "/v1/me/tokens", headers=invitee, json={"name": "ro", "scopes": ["read"]}
        ).json()["token"]
        return {"Authorization": f"Bearer {pat}"}, invitation
    elif case == "unknown id":
        return invitee, "0" * 32
    elif case == "anonymous":
        return {}, invitation
    return invitee, invitation


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("wrong user", 404),
        ("unknown id", 404),
        ("expired", 409),
        ("declined then accepted", 409),
        ("accepted twice", 409),
        ("revoked", 409),
        ("read-scoped token", 403),
        ("anonymous", 401),
    ],
)
def test_accept_negative_table(world, clock, case: str, status: int) -> None:
    headers, invitation = _setup_case(world, case, clock)
    response = _answer(world, invitation, headers)
    assert response.status_code == status, response.text
    invitee = world["api"].login("invitee@example.org")
    if case != "accepted twice":
        assert _orgs(world, invitee) == []
    if case == "wrong user":
        assert _orgs(world, headers) == []
        # the invitation is still there for its real holder
        assert _answer(world, invitation, invitee).status_code == 200


def _member(world: dict[str, Any], email: str) -> Any:
    api = world["api"]
    headers = api.user_and_login(email)
    invitation = _invite(world, email).json()["id"]
    assert _answer(world, invitation, headers).status_code == 200
    return headers


@pytest.mark.parametrize(
    ("who", "email", "status"),
    [
        ("member", "x@example.org", 403),  # a plain member may not invite
        ("outsider", "x@example.org", 404),  # the organisation is not even visible
        ("read token", "x@example.org", 403),  # an owner's read-only token
        ("owner", "member@example.org", 409),  # already a member
        ("owner", "pending@example.org", 409),  # already invited
        ("owner", "not-an-address", 400),
    ],
)
def test_invite_negative_table(world, who: str, email: str, status: int) -> None:
    api = world["api"]
    member = _member(world, "member@example.org")
    assert _invite(world, "pending@example.org").status_code == 201
    headers = {
        "member": member,
        "outsider": api.user_and_login("outsider@example.org"),
        "owner": world["boss"],
    }.get(who)
    if who == "read token":
        pat = api.client.post(
            "/v1/me/tokens", headers=world["boss"], json={"name": "ro", "scopes": ["read"]}
        ).json()["token"]
        headers = {"Authorization": f"Bearer {pat}"}
    response = _invite(world, email, headers=headers)
    assert response.status_code == status, response.text


def test_answers_do_not_reveal_accounts(world) -> None:
    api = world["api"]
    api.user("exists@example.org")
    a = _invite(world, "exists@example.org")
    b = _invite(world, "ghost@example.org")
    assert a.status_code == b.status_code == 201
    assert set(a.json()) == set(b.json())
    assert {k: v for k, v in a.json().items() if k not in {"id", "email"}} == {
        k: v for k, v in b.json().items() if k not in {"id", "email"}
    }
    # changing the role of a non-member: one answer for "has an account" and "has none"
    answers = []
    for email in ("exists@example.org", "ghost@example.org"):
        r = api.client.put(
            f"/v1/orgs/{world['org']}/members",
            headers=world["boss"],
            json={"email": email, "role": "owner"},
        )
        g = api.client.put(
            f"/v1/fleets/{world['fleet']}/members",
            headers=world["boss"],
            json={"email": email, "role": "viewer"},
        )
        answers.append(
            (
                r.status_code,
                r.json()["detail"].replace(email, "E"),
                g.status_code,
                g.json()["detail"].replace(email, "E"),
            )
        )
    assert answers[0] == answers[1]
    assert answers[0][0] == 404 and answers[0][2] == 404


def test_members_leave_but_not_the_last_owner(world) -> None:
    api = world["api"]
    member = _member(world, "m@example.org")
    me = api.client.get("/v1/me", headers=member).json()["id"]
    assert (
        api.client.put(
            f"/v1/fleets/{world['fleet']}/members",
            headers=world["boss"],
            json={"email": "m@example.org", "role": "viewer"},
        ).status_code
        == 200
    )
    assert api.client.post(f"/v1/orgs/{world['org']}/leave", headers=member).status_code == 204
    assert _orgs(world, member) == []
    assert api.client.get(f"/v1/fleets/{world['fleet']}", headers=member).status_code == 404
    listed = api.client.get(f"/v1/fleets/{world['fleet']}/members", headers=world["boss"]).json()
    assert me not in [m["user_id"] for m in listed]
    # the last owner cannot leave ...
    last = api.client.post(f"/v1/orgs/{world['org']}/leave", headers=world["boss"])
    assert last.status_code == 409 and "last owner" in last.json()["detail"]
    # ... until another owner exists
    second = _member(world, "o2@example.org")
    assert (
        api.client.put(
            f"/v1/orgs/{world['org']}/members",
            headers=world["boss"],
            json={"email": "o2@example.org", "role": "owner"},
        ).status_code
        == 200
    )
    assert (
        api.client.post(f"/v1/orgs/{world['org']}/leave", headers=world["boss"]).status_code == 204
    )
    assert _orgs(world, second) == ["acme"]
    assert api.client.post(f"/v1/orgs/{world['org']}/leave", headers=second).status_code == 409


def test_concurrent_answers_only_one_wins(world) -> None:
    api = world["api"]
    api.user_and_login("racer@example.org")
    invitation = _invite(world, "racer@example.org").json()["id"]
    from bastion.server.users import repository as users_repo

    with api.ctx.db.session(write=False) as session:
        user_id = users_repo.get_user_by_email(session, "racer@example.org").id
    from bastion.server.auth.principal import Principal, PrincipalKind, Via

    principal = Principal(
        kind=PrincipalKind.USER, id=user_id, via=Via.SESSION, scopes=frozenset({"admin"})
    )
    racers = 8
    barrier = threading.Barrier(racers)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        with api.ctx.db.session() as session:
            barrier.wait()
            try:
                invitations.answer(api.ctx, session, principal, invitation, accept=i % 2 == 0)
                result: Any = "accept" if i % 2 == 0 else "decline"
            except ConflictError as exc:
                result = exc
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    wins = [o for o in outcomes if isinstance(o, str)]
    assert len(outcomes) == racers
    assert len(wins) == 1, outcomes
    racer = api.login("racer@example.org")
    assert _orgs(world, racer) == (["acme"] if wins[0] == "accept" else [])
