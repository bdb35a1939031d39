"""Posture policy: what the facts a device reports about its running system must show.

A posture is a mapping of reported facts (``selinux``, ``randomize_va_space``,
``lockdown``, ``secure_boot``, ``module_sig_enforce``, ``verity``,
``listening_ports``, ``cmdline``); a :class:`PosturePolicy` opts in per feature and
:func:`check_posture` reports each breach with a stable id (``posture.selinux.
permissive``, ...); a fact reported as ``"unknown"`` (or not at all) fails every
policy that needs it (``posture.<fact>.unknown``/``.missing``). Pure. The facts are the
device's claims: the quote proves which measured system makes them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bastion import limits
from bastion.errors import FormatError

Fail = Callable[[str, str], None]

#: the value a device reports for a fact it could not establish (device/posture.py)
UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class PosturePolicy:
    """What the reported posture must show; every feature is opt-in (None/False: off)."""

    require_selinux: str | None = None  # "enforcing"
    min_aslr: int | None = None  # randomize_va_space at least this (2: full)
    require_lockdown: str | None = None  # "integrity" or "confidentiality"
    require_secure_boot: bool = False
    require_module_sig_enforce: bool = False
    require_verity: bool = False
    allowed_ports: tuple[int, ...] | None = None  # listening ports allowed (None: any)
    forbidden_cmdline: tuple[str, ...] = ()  # command-line words or prefixes ("init=")

    @classmethod
    def from_json(cls, doc: Any) -> PosturePolicy:
        """From a JSON object (settings, API); FormatError for unknown or bad fields."""
        if doc is None:
            return cls()
        if not isinstance(doc, dict):
            raise FormatError("posture policy must be an object")
        known = set(cls.__dataclass_fields__)
        if set(doc) - known:
            raise FormatError(f"posture policy: unknown fields {sorted(set(doc) - known)}")
        selinux = doc.get("require_selinux")
        if selinux not in (None, "enforcing", "permissive"):
            raise FormatError("posture policy: require_selinux must be 'enforcing' or null")
        lockdown = doc.get("require_lockdown")
        if lockdown not in (None, "integrity", "confidentiality"):
            raise FormatError("posture policy: require_lockdown: integrity|confidentiality")
        aslr = doc.get("min_aslr")
        if aslr is not None and (isinstance(aslr, bool) or aslr not in (0, 1, 2)):
            raise FormatError("posture policy: min_aslr must be 0, 1 or 2")
        flags = {}
        for name in ("require_secure_boot", "require_module_sig_enforce", "require_verity"):
            value = doc.get(name, False)
            if not isinstance(value, bool):
                raise FormatError(f"posture policy: {name} must be a boolean")
            flags[name] = value
        ports = doc.get("allowed_ports")
        if ports is not None and not (
            isinstance(ports, list)
            and len(ports) <= limits.ATTEST_POSTURE_MAX_LIST
            and all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports)
        ):
            raise FormatError("posture policy: allowed_ports must be a list of ports")
        words = doc.get("forbidden_cmdline", [])
        if not (
            isinstance(words, list)
            and len(words) <= limits.ATTEST_POSTURE_MAX_LIST
            and all(isinstance(w, str) and 0 < len(w) <= 256 for w in words)
        ):
            raise FormatError("posture policy: forbidden_cmdline must be a list of words")
        return cls(
            require_selinux=selinux,
            min_aslr=aslr,
            require_lockdown=lockdown,
            allowed_ports=tuple(sorted(set(ports))) if ports is not None else None,
            forbidden_cmdline=tuple(words),
            **flags,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "require_selinux": self.require_selinux,
            "min_aslr": self.min_aslr,
            "require_lockdown": self.require_lockdown,
            "require_secure_boot": self.require_secure_boot,
            "require_module_sig_enforce": self.require_module_sig_enforce,
            "require_verity": self.require_verity,
            "allowed_ports": list(self.allowed_ports) if self.allowed_ports is not None else None,
            "forbidden_cmdline": list(self.forbidden_cmdline),
        }


def check_posture(fail: Fail, posture: Mapping[str, Any], policy: PosturePolicy) -> None:
    def fact(name: str) -> Any:
        value = posture.get(name)
        if value is None:
            fail(f"posture.{name}.missing", f"the device did not report {name}")
        elif value == UNKNOWN:  # the device could not establish it: fail closed
            fail(f"posture.{name}.unknown", f"the device could not establish {name}")
            return None
        return value

    if policy.require_selinux is not None:
        mode = fact("selinux")
        if mode is not None and mode != policy.require_selinux:
            label = mode if mode in ("permissive", "disabled", "enforcing") else "other"
            fail(f"posture.selinux.{label}", f"SELinux is {mode!r}, policy requires enforcing")
    if policy.min_aslr is not None:
        aslr = fact("randomize_va_space")
        if aslr is not None and (not isinstance(aslr, int) or aslr < policy.min_aslr):
            fail("posture.aslr.weak", f"randomize_va_space is {aslr!r}, need {policy.min_aslr}")
    if policy.require_lockdown is not None:
        mode = fact("lockdown")
        order = {"none": 0, "integrity": 1, "confidentiality": 2}
        if mode is not None and order.get(str(mode), -1) < order[policy.require_lockdown]:
            fail("posture.lockdown.weak", f"lockdown is {mode!r}, need {policy.require_lockdown}")
    for flag, name, ident in (
        (policy.require_secure_boot, "secure_boot", "posture.secure_boot.off"),
        (policy.require_module_sig_enforce, "module_sig_enforce", "posture.module_sig.off"),
        (policy.require_verity, "verity", "posture.verity.off"),
    ):
        if flag:
            value = fact(name)
            if value is not None and value not in (True, "verified", "enabled", 1):
                fail(ident, f"{name} is {value!r}")
    if policy.allowed_ports is not None:
        ports = fact("listening_ports")
        if ports is not None:
            seq = isinstance(ports, list | tuple)
            extra = sorted(set(ports) - set(policy.allowed_ports)) if seq else []
            if not seq:
                fail("posture.ports.unexpected", "listening_ports is not a list")
            elif extra:
                fail("posture.ports.unexpected", f"ports {extra} listen, not in the policy")
    if policy.forbidden_cmdline:
        cmdline = fact("cmdline")
        if cmdline is not None:
            words = str(cmdline).split()
            hits = [
                w
                for w in words
                for bad in policy.forbidden_cmdline
                if w == bad or (bad.endswith("=") and w.startswith(bad))
            ]
            if hits:
                fail("posture.cmdline.forbidden", f"command line has forbidden {hits}")
