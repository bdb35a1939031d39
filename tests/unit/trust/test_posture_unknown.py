"""A fact the device could not establish ("unknown") fails every policy that needs it."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.trust.posture import PosturePolicy, check_posture

STRICT = PosturePolicy(
    require_selinux="enforcing",
    min_aslr=2,
    require_lockdown="integrity",
    require_secure_boot=True,
    require_module_sig_enforce=True,
    require_verity=True,
    allowed_ports=(22,),
    forbidden_cmdline=("init=",),
)
GOOD: dict[str, Any] = {
    "selinux": "enforcing",
    "randomize_va_space": 2,
    "lockdown": "integrity",
    "secure_boot": True,
    "module_sig_enforce": True,
    "verity": "verified",
    "listening_ports": [22],
    "cmdline": "root=/dev/dm-0 ro",
}


def _failures(posture: dict[str, Any], policy: PosturePolicy = STRICT) -> list[str]:
    out: list[str] = []
    check_posture(lambda ident, _detail: out.append(ident), posture, policy)
    return out


def test_good_posture_passes() -> None:
    assert _failures(GOOD) == []


@pytest.mark.parametrize("fact", sorted(GOOD))
def test_unknown_fact_fails_closed(fact: str) -> None:
    assert _failures({**GOOD, fact: "unknown"}) == [f"posture.{fact}.unknown"]


@pytest.mark.parametrize("fact", sorted(GOOD))
def test_missing_fact_fails_closed(fact: str) -> None:
    posture = {k: v for k, v in GOOD.items() if k != fact}
    assert _failures(posture) == [f"posture.{fact}.missing"]


def test_unknown_facts_pass_a_policy_that_does_not_ask() -> None:
    assert _failures(dict.fromkeys(GOOD, "unknown"), PosturePolicy()) == []


@pytest.mark.parametrize(
    ("fact", "value", "ident"),
    [
        ("selinux", "permissive", "posture.selinux.permissive"),
        ("selinux", "disabled", "posture.selinux.disabled"),
        ("randomize_va_space", 1, "posture.aslr.weak"),
        ("lockdown", "none", "posture.lockdown.weak"),
        ("secure_boot", False, "posture.secure_boot.off"),
        ("module_sig_enforce", False, "posture.module_sig.off"),
        ("verity", "off", "posture.verity.off"),
        ("verity", "corrupted", "posture.verity.off"),
        ("listening_ports", [22, 8080], "posture.ports.unexpected"),
        ("cmdline", "ro init=/bin/sh", "posture.cmdline.forbidden"),
    ],
)
def test_collected_values_that_break_the_policy(fact: str, value: Any, ident: str) -> None:
    assert _failures({**GOOD, fact: value}) == [ident]
