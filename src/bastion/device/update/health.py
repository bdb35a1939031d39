"""Declarative health checks that decide whether a slot in trial is committed.

A specification (JSON; from the release manifest's ``[meta.bastion-health] spec`` and from
the device's ``update.json``) is::

    {"time_limit": 120,
     "required": [{"command": ["/usr/bin/app", "--selftest"], "timeout": 10},
                  {"unit": "app.service"},
                  {"http": "http://127.0.0.1:8080/healthz", "status": 200, "timeout": 5}],
     "wanted":   [...same kinds...]}

A ``command`` passes when it exits 0 within its timeout; a ``unit`` when ``systemctl
is-active --quiet UNIT`` exits 0; an ``http`` probe when a GET answers the expected
status (through the one HTTP client, io/http.py; plain http on loopback only). A
failing *required* check fails the slot; a failing *wanted* check is a warning. The
release and the device specifications are merged (both lists kept, the smaller time
limit); once the overall time limit is spent, every check not yet run fails.

:func:`parse_spec` refuses unknown keys, non-string argv, timeouts out of
1..UPDATE_HEALTH_MAX_SECONDS and more than UPDATE_HEALTH_MAX_CHECKS checks
(FormatError/LimitError); :func:`run` never raises for a failing check, it reports it.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bastion.errors import BastionError, FormatError, LimitError
from bastion.formats import strict_json
from bastion.io.http import HttpClient
from bastion.io.runner import CommandRunner
from bastion.limits import UPDATE_HEALTH_MAX_CHECKS, UPDATE_HEALTH_MAX_SECONDS

DEFAULT_TIMEOUT = 30
DEFAULT_TIME_LIMIT = 300


@dataclass(frozen=True, slots=True)
class Check:
    kind: str  # command | unit | http
    target: tuple[str, ...]
    timeout: int
    status: int = 200

    def describe(self) -> str:
        return f"{self.kind} {' '.join(self.target)}"


@dataclass(frozen=True, slots=True)
class Spec:
    required: tuple[Check, ...] = ()
    wanted: tuple[Check, ...] = ()
    time_limit: int = DEFAULT_TIME_LIMIT

    def merged(self, other: Spec) -> Spec:
        return Spec(
            self.required + other.required,
            self.wanted + other.wanted,
            min(self.time_limit, other.time_limit),
        )


@dataclass(frozen=True, slots=True)
class HealthResult:
    ok: bool
    failures: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.failures) if self.failures else "healthy"


def _seconds(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise FormatError(f"health {what} must be an integer number of seconds")
    if not 1 <= value <= UPDATE_HEALTH_MAX_SECONDS:
        raise LimitError(f"health {what} {value} out of 1..{UPDATE_HEALTH_MAX_SECONDS} s")
    return value


def _check(item: Any) -> Check:
    if not isinstance(item, dict):
        raise FormatError("a health check must be an object")
    kinds = [k for k in ("command", "unit", "http") if k in item]
    if len(kinds) != 1:
        raise FormatError(f"health check {item!r} needs exactly one of command, unit, http")
    kind = kinds[0]
    extra = sorted(set(item) - {kind, "timeout", "status"})
    if extra or ("status" in item and kind != "http"):
        raise FormatError(f"health check {kind} has unknown key(s) {extra or ['status']}")
    timeout = _seconds(item.get("timeout", DEFAULT_TIMEOUT), f"{kind} timeout")
    value = item[kind]
    if kind == "command":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(a, str) and a for a in value)
        ):
            raise FormatError("health command must be a non-empty list of strings")
        return Check(kind, tuple(value), timeout)
    if not isinstance(value, str) or not value:
        raise FormatError(f"health {kind} must be a non-empty string")
    if kind == "unit":
        return Check(kind, (value,), timeout)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise FormatError(f"health probe {value!r} is not an http(s) URL")
    status = item.get("status", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 399:
        raise FormatError(f"health probe status {status!r} must be 100..399")
    return Check(kind, (value,), timeout, status)


def parse_spec(doc: Mapping[str, Any] | str | None) -> Spec:
    """A specification from its JSON (text or parsed); None or {} is the empty one."""
    if doc is None:
        return Spec()
    if isinstance(doc, str):
        doc = strict_json.loads_object(doc, what="health specification")
    extra = sorted(set(doc) - {"required", "wanted", "time_limit"})
    if extra:
        raise FormatError(f"health specification has unknown key(s) {extra}")
    lists: dict[str, tuple[Check, ...]] = {}
    for name in ("required", "wanted"):
        items = doc.get(name, [])
        if not isinstance(items, list):
            raise FormatError(f"health {name} must be a list")
        lists[name] = tuple(_check(i) for i in items)
    if len(lists["required"]) + len(lists["wanted"]) > UPDATE_HEALTH_MAX_CHECKS:
        raise LimitError(f"health specification has over {UPDATE_HEALTH_MAX_CHECKS} checks")
    limit = _seconds(doc.get("time_limit", DEFAULT_TIME_LIMIT), "time_limit")
    return Spec(lists["required"], lists["wanted"], limit)


Probe = Callable[[Check], str | None]


class Prober:
    """Runs checks for real: commands and units through the runner, probes over HTTP."""

    def __init__(self, runner: CommandRunner | None = None) -> None:
        self.runner = runner or CommandRunner()

    def __call__(self, check: Check) -> str | None:
        """None when the check passes, else why not."""
        try:
            if check.kind == "command":
                result = self.runner.run(list(check.target), check=False, timeout=check.timeout)
                return None if result.returncode == 0 else f"exited {result.returncode}"
            if check.kind == "unit":
                argv = ["systemctl", "is-active", "--quiet", check.target[0]]
                result = self.runner.run(argv, check=False, timeout=check.timeout)
                return None if result.returncode == 0 else "is not active"
            parts = urllib.parse.urlsplit(check.target[0])
            path = parts.path or "/"
            with HttpClient(f"{parts.scheme}://{parts.netloc}", timeout=check.timeout) as http:
                answer = http.request("GET", path)
            if answer.status != check.status:
                return f"answered {answer.status}, expected {check.status}"
            return None
        except BastionError as exc:
            return str(exc)


def run(
    spec: Spec, probe: Probe, *, monotonic: Callable[[], float] = time.monotonic
) -> HealthResult:
    """Run every check within the time limit; required failures fail the result."""
    start = monotonic()
    failures: list[str] = []
    warnings: list[str] = []

    def one(checks: Sequence[Check], into: list[str]) -> None:
        for check in checks:
            if monotonic() - start > spec.time_limit:
                into.append(f"{check.describe()}: not run, time limit {spec.time_limit} s spent")
                continue
            why = probe(check)
            if why is not None:
                into.append(f"{check.describe()}: {why}")

    one(spec.required, failures)
    one(spec.wanted, warnings)
    return HealthResult(not failures, tuple(failures), tuple(warnings))
