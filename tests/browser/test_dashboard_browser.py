"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium.

One served app per module (tests/browser/dashkit.py): sign-in with password and TOTP,
a device going from "attestation required" to "attested", revoking a device, a viewer
who sees no revoke button and whose forged requests (with and without a CSRF token)
are refused, a form on another origin refused, the CSP header with no script in any
page, the decoded event log with a hostile event string shown inert, and an owner
disabling a member (a viewer's forged request refused).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bastion.server.ui.security import CONTENT_SECURITY_POLICY

from .dashkit import (
    Scene,
    chromium,
    enable_totp,
    missing_browser,
    navigate_and_wait,
    scene,
    sign_in,
    submit_and_wait,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    missing = missing_browser()
    if missing is not None:
        if IN_CI:
            pytest.fail(f"browser tests cannot run: {missing}", pytrace=False)
        pytest.skip(missing)
    with scene(tmp_path_factory.mktemp("dashboard")) as running:
        yield running


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def _by(kind: str) -> Any:
    from selenium.webdriver.common.by import By

    return getattr(By, kind)


def _text(driver: Any, element_id: str) -> str:
    return str(driver.find_element(_by("ID"), element_id).text)


def _has(driver: Any, element_id: str) -> bool:
    return bool(driver.find_elements(_by("ID"), element_id))


@pytest.fixture(scope="module")
def operator_code(stage: Scene) -> Callable[[], str]:
    """The operator has TOTP on for the whole module; fresh codes."""
    return enable_totp(stage.world, "operator")


def test_sign_in_with_password_and_totp(
    stage: Scene, browser: Any, operator_code: Callable[[], str]
) -> None:
    code = operator_code
    sign_in(browser, stage.url, "operator@example.com")  # no second factor
    assert "second factor required" in _text(browser, "signin-error")
    assert browser.current_url.endswith("/ui/signin")
    sign_in(browser, stage.url, "operator@example.com", "000000")
    assert "wrong e-mail, password or second factor" in _text(browser, "signin-error")
    sign_in(browser, stage.url, "operator@example.com", code())
    assert browser.current_url.endswith("/ui/fleets"), browser.current_url
    assert "cams" in _text(browser, "fleets")
    cookie = browser.get_cookie("bastion_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/ui" and not cookie["secure"]  # plain HTTP on loopback
    browser.get(stage.page("/ui/account"))
    assert _text(browser, "totp-state") == "enabled"
    submit_and_wait(browser, browser.find_element(_by("ID"), "signout"))
    assert browser.current_url.endswith("/ui/signin")
    browser.get(stage.page("/ui/fleets"))  # the session is gone, not only the cookie
    assert browser.current_url.endswith("/ui/signin")


def test_device_goes_from_attestation_required_to_attested(stage: Scene, browser: Any) -> None:
    device = stage.device("cam-attest")
    device.report(
        [{"type": "boot.done", "data": {"slot": "b", "release": "1.0"}}], ["kernel: hello"]
    )
    sign_in(browser, stage.url, "viewer@example.com")
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}"))
    cell = browser.find_element(_by("CSS_SELECTOR"), f"#device-{device.id} .attest")
    assert cell.text == "attestation required"
    assert device.attest()["ok"]
    browser.refresh()
    row = browser.find_element(_by("ID"), f"device-{device.id}")
    assert row.find_element(_by("CSS_SELECTOR"), ".attest").text == "attested"
    assert "b" in [td.text for td in row.find_elements(_by("TAG_NAME"), "td")]  # the slot
    failed = device.attest({"selinux": "permissive"})
    assert not failed["ok"]
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}/devices/{device.id}"))
    assert _text(browser, "attestation") == "attestation failed"
    verdicts = _text(browser, "verdicts")
    assert "posture.selinux.permissive" in verdicts
    assert "kernel: hello" in _text(browser, "logs")
    assert "boot.done" in _text(browser, "events")


def test_operator_revokes_a_device(stage: Scene, browser: Any) -> None:
    device = stage.device("cam-revoke")
    sign_in(browser, stage.url, "admin@example.com")
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}/devices/{device.id}"))
    submit_and_wait(browser, browser.find_element(_by("ID"), "revoke"))
    assert _text(browser, "device-state") == "revoked"
    assert not _has(browser, "revoke")
    assert stage.device_state(device.id) == "revoked"
    r = stage.world.client.get("/v1/device", headers=device.headers)
    assert r.status_code == 401, r.text  # the device is refused from its next request


def _forge(
    browser: Any, action: str, csrf: str | None, fields: dict[str, str] | None = None
) -> None:
    """Build and send a form POST from the signed-in page (same origin, no CSP in the
    way: WebDriver scripts run outside the page's policy), as a curious viewer could."""
    navigate_and_wait(
        browser,
        lambda: browser.execute_script(
            """
        const form = document.createElement('form');
        form.method = 'post';
        form.action = arguments[0];
        const values = Object.assign({}, arguments[2]);
        if (arguments[1] !== null) { values.csrf = arguments[1]; }
        for (const [name, value] of Object.entries(values)) {
          const field = document.createElement('input');
          field.type = 'hidden'; field.name = name; field.value = value;
          form.appendChild(field);
        }
        document.body.appendChild(form);
        form.submit();
        """,
            action,
            csrf,
            fields or {},
        ),
    )


def test_viewer_sees_no_revoke_button_and_forged_requests_are_refused(
    stage: Scene, browser: Any
) -> None:
    device = stage.device("cam-viewer")
    sign_in(browser, stage.url, "viewer@example.com")
    page = f"/ui/fleets/{stage.fleet_id}/devices/{device.id}"
    browser.get(stage.page(page))
    assert not _has(browser, "revoke") and not _has(browser, "revoke-form")
    csrf = browser.find_element(_by("NAME"), "csrf").get_attribute("value")  # sign-out form
    assert csrf
    for token, expected in ((csrf, "role viewer in fleet 'cams' is not enough"), (None, "CSRF")):
        browser.get(stage.page(page))
        _forge(browser, stage.page(f"{page}/revoke"), token)
        detail = _text(browser, "error-detail")
        assert expected in detail, detail
        assert browser.title.startswith("403"), browser.title
        assert stage.device_state(device.id) == "active"


def _command_rows(browser: Any) -> list[tuple[str, str]]:
    rows = browser.find_elements(_by("CSS_SELECTOR"), "#commands tr[data-command]")
    return [(r.get_attribute("data-kind"), r.get_attribute("data-status")) for r in rows]


def test_operator_queues_a_reboot_and_a_viewer_cannot(
    stage: Scene, browser: Any, operator_code: Callable[[], str]
) -> None:
    device = stage.device("cam-reboot")
    page = f"/ui/fleets/{stage.fleet_id}/devices/{device.id}"
    sign_in(browser, stage.url, "operator@example.com", operator_code())
    browser.get(stage.page(page))
    assert _command_rows(browser) == []
    from selenium.webdriver.support.select import Select

    Select(browser.find_element(_by("ID"), "command-kind")).select_by_value("reboot")
    submit_and_wait(browser, browser.find_element(_by("ID"), "command-queue"))
    assert browser.current_url == stage.page(page), browser.current_url
    assert _command_rows(browser) == [("reboot", "queued")]
    listed = stage.world.client.get(
        f"/v1/fleets/{stage.fleet_id}/devices/{device.id}/commands",
        headers=stage.world.headers["viewer"],
    ).json()
    assert [(c["kind"], c["status"]) for c in listed] == [("reboot", "queued")]
    # a viewer sees the list but no form, and a forged POST is refused
    browser.delete_all_cookies()
    sign_in(browser, stage.url, "viewer@example.com")
    browser.get(stage.page(page))
    assert not _has(browser, "command-form") and not _has(browser, "command-queue")
    assert _command_rows(browser) == [("reboot", "queued")]
    csrf = browser.find_element(_by("NAME"), "csrf").get_attribute("value")  # sign-out form
    for token, expected in ((csrf, "role viewer in fleet 'cams' is not enough"), (None, "CSRF")):
        browser.get(stage.page(page))
        _forge(browser, stage.page(f"{page}/commands"), token, {"kind": "reboot"})
        detail = _text(browser, "error-detail")
        assert expected in detail, detail
        assert browser.title.startswith("403"), browser.title
        browser.get(stage.page(page))
        assert _command_rows(browser) == [("reboot", "queued")]


def test_operator_starts_and_pauses_a_rollout(
    stage: Scene, browser: Any, operator_code: Callable[[], str]
) -> None:
    api = stage.world.client
    stage.device("cam-rollout")
    made = api.post(
        f"/v1/fleets/{stage.fleet_id}/releases/external",
        json={
            "url": "https://cdn.example.org/2.0.raucb",
            "length": 4096,
            "sha256": "ab" * 32,
            "version": "2.0",
            "compatible": "bastion-test",
        },
        headers=stage.world.headers["operator"],
    )
    assert made.status_code == 201, made.text
    sign_in(browser, stage.url, "operator@example.com", operator_code())
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}/releases"))
    assert "2.0" in _text(browser, "releases")
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}/rollouts"))
    from selenium.webdriver.support.select import Select

    Select(browser.find_element(_by("ID"), "rollout-release")).select_by_visible_text("2.0")
    canary = browser.find_element(_by("ID"), "rollout-canary")
    canary.clear()
    canary.send_keys("0")  # no canary: a canary that happens to select no device is a 409
    submit_and_wait(browser, browser.find_element(_by("ID"), "rollout-start"))
    assert _has(browser, "rollout-state"), browser.title + browser.page_source[-600:]
    state = browser.find_element(_by("ID"), "rollout-state")
    assert state.get_attribute("data-state") == "running", state.text
    waves = browser.find_elements(_by("CSS_SELECTOR"), "#waves tr[data-wave]")
    assert [w.get_attribute("data-state") for w in waves] == ["open"]
    assert "100 %" in waves[0].text
    rollout_url = browser.current_url
    submit_and_wait(browser, browser.find_element(_by("ID"), "rollout-pause"))
    assert browser.current_url == rollout_url
    assert browser.find_element(_by("ID"), "rollout-state").get_attribute("data-state") == "paused"
    assert "paused by" in _text(browser, "paused-reason")
    assert _has(browser, "rollout-resume") and not _has(browser, "rollout-pause")
    rollout_id = rollout_url.rstrip("/").rsplit("/", 1)[1]
    shown = api.get(
        f"/v1/fleets/{stage.fleet_id}/rollouts/{rollout_id}",
        headers=stage.world.headers["viewer"],
    )
    assert shown.status_code == 200 and shown.json()["state"] == "paused", shown.text
    # a viewer sees the progress without buttons; its forged resume is refused
    browser.delete_all_cookies()
    sign_in(browser, stage.url, "viewer@example.com")
    browser.get(rollout_url)
    assert not any(_has(browser, b) for b in ("rollout-pause", "rollout-resume", "rollout-abort"))
    csrf = browser.find_element(_by("NAME"), "csrf").get_attribute("value")
    _forge(browser, f"{rollout_url}/resume", csrf)
    assert "is not enough" in _text(browser, "error-detail")
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}/rollouts"))
    assert not _has(browser, "rollout-form")
    assert (
        api.get(
            f"/v1/fleets/{stage.fleet_id}/rollouts/{rollout_id}",
            headers=stage.world.headers["viewer"],
        ).json()["state"]
        == "paused"
    )
    # the operator ends it (abort) so other tests see no running rollout
    assert (
        api.post(
            f"/v1/fleets/{stage.fleet_id}/rollouts/{rollout_id}/abort",
            headers=stage.world.headers["operator"],
        ).status_code
        == 200
    )


ATTACKER_PAGE = """<!doctype html><html><body>
<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit" id="bait">Win a prize</button>
</form></body></html>"""


def test_a_form_on_another_origin_is_refused(stage: Scene, browser: Any, tmp_path: Path) -> None:
    """Another port of the same host is the same *site*, so SameSite=Strict still sends
    the cookie: the origin check refuses it, even with a leaked CSRF token."""
    import functools
    import http.server
    import threading

    device = stage.device("cam-csrf")
    sign_in(browser, stage.url, "admin@example.com")
    page = f"/ui/fleets/{stage.fleet_id}/devices/{device.id}"
    browser.get(stage.page(page))
    leaked = browser.find_element(_by("NAME"), "csrf").get_attribute("value")
    site = tmp_path / "evil"
    site.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        for csrf in (leaked, ""):
            (site / "index.html").write_text(
                ATTACKER_PAGE.format(action=stage.page(f"{page}/revoke"), csrf=csrf)
            )
            browser.get(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
            submit_and_wait(browser, browser.find_element(_by("ID"), "bait"))
            detail = _text(browser, "error-detail")
            assert "cross-site form refused" in detail or "another origin" in detail, detail
            assert stage.device_state(device.id) == "active"
    finally:
        evil.shutdown()
        evil.server_close()
        thread.join(timeout=5)


def test_every_page_has_the_csp_and_no_script(stage: Scene, browser: Any) -> None:
    sign_in(browser, stage.url, "owner@example.com")
    device = stage.device("cam-csp")
    fleet = stage.fleet_id
    org = stage.world.org_id
    pages = [
        "/ui/signin",
        "/ui/fleets",
        f"/ui/fleets/{fleet}",
        f"/ui/fleets/{fleet}/members",
        f"/ui/fleets/{fleet}/devices/{device.id}",
        f"/ui/fleets/{fleet}/provisioning-keys",
        f"/ui/fleets/{fleet}/releases",
        f"/ui/fleets/{fleet}/rollouts",
        f"/ui/orgs/{org}/members",
        f"/ui/orgs/{org}/audit",
        f"/ui/orgs/{org}/users/{stage.member('csp-member')}",
        "/ui/account",
    ]
    cookie = browser.get_cookie("bastion_session")["value"]
    for path in pages:
        r = httpx.get(stage.page(path), cookies={"bastion_session": cookie})
        assert r.status_code == 200, (path, r.status_code)
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert r.headers["x-frame-options"] == "DENY"
        assert not re.search(r"<script|\son[a-z]+=|javascript:|style=", r.text, re.I), path
        browser.get(stage.page(path))
        assert not browser.find_elements(_by("TAG_NAME"), "script"), path
    assert "script-src" not in CONTENT_SECURITY_POLICY  # default-src 'none' covers scripts
    browser.get(stage.page(f"/ui/orgs/{org}/audit"))
    status = browser.find_element(_by("ID"), "chain-status")
    assert status.get_attribute("data-chain") == "intact", status.text


HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


def test_the_event_log_is_shown_decoded_and_inert(stage: Scene, browser: Any) -> None:
    """A device-supplied event string with markup and a bidirectional override is text on
    the page: no element, no alert, the override written out."""
    from bastion.formats import eventlog as el

    text = f"{HOSTILE}\u202eexe.txt"
    hostile = el.measure(12, el.EventType.EV_IPL, text.encode("utf-16-le") + b"\0\0")
    device = stage.device("cam-eventlog", (hostile,))
    assert device.attest()["ok"]
    failed = device.attest({"selinux": "permissive"})
    assert not failed["ok"]
    sign_in(browser, stage.url, "viewer@example.com")
    browser.get(stage.page(f"/ui/fleets/{stage.fleet_id}/devices/{device.id}"))
    rows = browser.find_elements(_by("CSS_SELECTOR"), "#eventlog tbody tr")
    assert len(rows) > 5
    cells = {
        r.get_attribute("data-pcr"): r.find_element(_by("CSS_SELECTOR"), ".event-data").text
        for r in rows
    }
    assert cells["12"] == f"{HOSTILE}\\u202eexe.txt"
    assert "posture.selinux.permissive" in _text(browser, "eventlog-failures")
    assert not browser.find_elements(_by("TAG_NAME"), "img")
    assert not browser.find_elements(_by("TAG_NAME"), "script")
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it raises when there is none


def test_owner_disables_a_member_and_a_viewer_cannot(stage: Scene, browser: Any) -> None:
    """An organisation owner (TOTP on) disables a member from the user page, giving
    password and code again: the member's session dies at once. A viewer sees no
    manage link, and a forged POST with its own CSRF token is refused."""
    stage.member("boss", role="owner")
    boss_code = enable_totp(stage.world, "boss")
    worker = stage.member("worker")
    worker_session = stage.login("worker")
    org = stage.world.org_id
    sign_in(browser, stage.url, "boss@example.com", boss_code())
    browser.get(stage.page(f"/ui/orgs/{org}/members"))
    link = browser.find_element(_by("CSS_SELECTOR"), f'tr[data-user="{worker}"] a.manage')
    link.click()
    assert _text(browser, "user-state") == "active"
    browser.find_element(_by("ID"), "disable-password").send_keys("correct horse battery")
    browser.find_element(_by("ID"), "disable-totp").send_keys(boss_code())
    submit_and_wait(browser, browser.find_element(_by("ID"), "disable"))
    assert _text(browser, "user-state") == "disabled", browser.page_source[-800:]
    assert "session(s) and token(s) ended" in _text(browser, "notice")
    assert stage.world.client.get("/v1/me", headers=worker_session).status_code == 401
    # a viewer: no manage link; a forged enable (with its own CSRF token) is refused
    browser.delete_all_cookies()
    sign_in(browser, stage.url, "viewer@example.com")
    browser.get(stage.page(f"/ui/orgs/{org}/members"))
    assert not browser.find_elements(_by("CSS_SELECTOR"), "a.manage")
    csrf = browser.find_element(_by("NAME"), "csrf").get_attribute("value")
    fields = {"password": "correct horse battery", "totp": "000000"}
    _forge(browser, stage.page(f"/ui/orgs/{org}/users/{worker}/enable"), csrf, fields)
    assert browser.title.startswith("403"), browser.title
    assert "only an owner" in _text(browser, "error-detail")
    r = stage.world.client.post(
        "/v1/auth/login", json={"email": "worker@example.com", "password": "correct horse battery"}
    )
    assert r.status_code in {401, 403}, r.text  # still disabled
