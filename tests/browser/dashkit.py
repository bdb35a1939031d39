"""Shared by the dashboard's browser tests and its screenshot script (bench/).

* :func:`chromium` starts Debian's headless Chromium through its chromedriver
  (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; Selenium is told both paths, so
  Selenium Manager never downloads anything), with a profile under a given folder.
* :class:`Scene` is a running fleet server on a free loopback port (uvicorn in a thread,
  devicekit.serve_on_loopback) with the devicekit world (org ``acme``, fleet ``cams``,
  users per role) and attestation set up: a product key and one golden-value statement,
  so the fleet enforces attestation. Devices are enrolled with software TPMs that
  measured the golden boot (:class:`Device`); the device side talks to the same app
  in-process.
* :func:`sign_in` fills the sign-in form; :func:`enable_totp` enrols TOTP for a user
  over the API and returns a function giving the next unused code.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.attestkit import boot_events, extend, golden_of

from bastion.device.attest import attest
from bastion.device.provision import DeviceIdentity
from bastion.formats import eventlog as el
from bastion.io.http import HttpClient
from bastion.tpm.software import SoftwareTpm
from bastion.trust.keys import KeyAlgorithm, generate_private_key
from bastion.trust.signer import SoftwareSigner
from bastion.trust.verdict import sign_golden

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
PASSWORD = "correct horse battery"
GOOD_POSTURE = {"selinux": "enforcing", "randomize_va_space": 2}


def missing_browser() -> str | None:
    """What is missing to run the browser tests (None: everything is there)."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} is missing (Debian package {package!r})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "Python module 'selenium' is not installed (pip install selenium)"
    return None


@contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium WebDriver with its profile in ``profile`` (quit afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _pem(signer: SoftwareSigner) -> str:
    from cryptography.hazmat.primitives import serialization

    return (
        signer.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@dataclass
class Device:
    """An enrolled device whose software TPM measured the golden boot."""

    scene: Scene
    tpm: SoftwareTpm
    log: bytes
    identity: DeviceIdentity
    headers: dict[str, str]

    @property
    def id(self) -> str:
        return self.identity.device_id

    def attest(self, posture: dict[str, Any] | None = None) -> dict[str, Any]:
        return attest(
            self.tpm,
            self.identity,
            HttpClient.over(self.scene.world.client),
            self.log,
            GOOD_POSTURE if posture is None else posture,
        )

    def report(self, events: list[dict[str, Any]], lines: list[str]) -> None:
        client = self.scene.world.client
        r = client.post("/v1/device/events", json={"events": events}, headers=self.headers)
        assert r.status_code == 200, r.text
        r = client.post("/v1/device/logs", json={"lines": lines}, headers=self.headers)
        assert r.status_code == 200, r.text


@dataclass
class Scene:
    """A served app, its devicekit world, and attestation enforced on fleet ``cams``."""

    url: str
    world: Any
    folder: Path

    @property
    def fleet_id(self) -> str:
        return str(self.world.fleet_id)

    def device(self, serial: str, extra_events: tuple[el.Event, ...] = ()) -> Device:
        """A device that booted the golden image; ``extra_events`` were measured after
        it (e.g. into PCR 12, which the fleet does not quote) and are in its log."""
        folder = self.folder / f"tpm-{serial}"
        folder.mkdir(parents=True, exist_ok=True)
        tpm = SoftwareTpm(folder / "tpm.state")
        log = extend(tpm, [*boot_events(), *extra_events])
        identity = self.world.enrol(tpm, self.world.create_key(), serial=serial)
        return Device(self, tpm, log, identity, self.world.device_headers(identity, tpm))

    def device_state(self, device_id: str) -> str:
        r = self.world.client.get(
            f"/v1/fleets/{self.fleet_id}/devices/{device_id}",
            headers=self.world.headers["admin"],
        )
        assert r.status_code == 200, r.text
        return str(r.json()["status"])

    def page(self, path: str) -> str:
        return f"{self.url}{path}"

    def member(self, name: str, role: str = "member") -> str:
        """A new user ``name@example.com`` with ``role`` in organisation acme; its id."""
        from bastion.server.orgs.models import OrgMember
        from bastion.server.users import service

        ctx = self.world.ctx
        with ctx.db.session() as session:
            user = service.create_user(ctx, session, f"{name}@example.com", PASSWORD, "cli:t")
            session.add(OrgMember(org_id=self.world.org_id, user_id=user.id, role=role))
            session.commit()
            return str(user.id)

    def login(self, name: str) -> dict[str, str]:
        """An API session of ``name@example.com`` (password only)."""
        r = self.world.client.post(
            "/v1/auth/login", json={"email": f"{name}@example.com", "password": PASSWORD}
        )
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['token']}"}


@contextmanager
def scene(folder: Path) -> Iterator[Scene]:
    """A whole dashboard scene on SQLite in ``folder`` (module docstring)."""
    from tests.integration.server.devicekit import serve_on_loopback, shared_world

    product = SoftwareSigner(generate_private_key(KeyAlgorithm.ECDSA_P256))
    with shared_world("sqlite", folder) as world:
        admin = world.headers["admin"]
        r = world.client.put(
            f"/v1/fleets/{world.fleet_id}/attestation",
            json={
                "product_key": _pem(product),
                "posture_policy": {"require_selinux": "enforcing"},
            },
            headers=admin,
        )
        assert r.status_code == 200, r.text
        statement = base64.b64encode(sign_golden(golden_of(boot_events()), product)).decode()
        r = world.client.post(
            f"/v1/fleets/{world.fleet_id}/attestation/golden",
            json={"statement": statement},
            headers=admin,
        )
        assert r.status_code == 201, r.text
        with serve_on_loopback(world.client.app) as url:
            yield Scene(url, world, folder)


def enable_totp(world: Any, role: str) -> Callable[[], str]:
    """Enrol TOTP for ``role@example.com`` over the API; a function giving fresh codes.

    The app runs on a FixedClock: each call moves it on one 30 s step so no code is
    reused (the server spends every step once)."""
    from bastion.server.auth import totp

    headers = world.headers.get(role) or _login(world, f"{role}@example.com")
    begin = world.client.post("/v1/me/totp", headers=headers)
    assert begin.status_code == 200, begin.text
    secret = begin.json()["secret"]
    clock = world.ctx.clock

    def code() -> str:
        clock.advance(30)
        return str(totp.code_at(secret, int(clock.now().timestamp()) // 30))

    confirm = world.client.post("/v1/me/totp/confirm", json={"code": code()}, headers=headers)
    assert confirm.status_code == 200, confirm.text
    return code


def _login(world: Any, email: str) -> dict[str, str]:
    r = world.client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def sign_in(driver: Any, url: str, email: str, totp_code: str | None = None) -> None:
    """Fill and send the sign-in form."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/ui/signin")
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    if totp_code is not None:
        driver.find_element(By.ID, "totp").send_keys(totp_code)
    submit_and_wait(driver, driver.find_element(By.ID, "signin-submit"))


def submit_and_wait(driver: Any, button: Any) -> None:
    """Click a form's button and wait until the answer replaced the page (a click does
    not wait for the navigation it starts; the next driver.get() could cancel it)."""
    navigate_and_wait(driver, button.click)


def navigate_and_wait(driver: Any, start: Callable[[], object]) -> None:
    """Run ``start`` (which begins a navigation) and wait until a new document has loaded.

    The old page is marked with a window property; a new document has a fresh window, so
    the wait ends once no marker is seen and the new document is complete. Selenium's
    ``staleness_of`` is not used: mid-navigation ChromeDriver can answer its probe with
    a generic "Node with given id does not belong to the document" error instead of a
    stale-element one, which failed a CI run."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    driver.execute_script("window.__bastionOldPage = true;")
    start()

    def replaced(d: Any) -> bool:
        try:
            return bool(
                d.execute_script(
                    "return window.__bastionOldPage !== true && document.readyState === 'complete';"
                )
            )
        except WebDriverException:  # between documents: ask again
            return False

    WebDriverWait(driver, 20).until(replaced)
