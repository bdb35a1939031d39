"""Device side of remote attestation: build evidence from the TPM, the event log, posture.

``attest(tpm, identity, http, eventlog, posture)`` runs one round against the fleet
server (docs/attestation.md):

1. ``POST /v1/device/attestation/challenge`` -> a fresh single-use nonce and the fleet's
   PCR selection;
2. TPM2_Quote with the enrolment AK over that selection with the nonce, and the PCR
   values read from the same TPM (:func:`build_evidence`);
3. ``POST /v1/device/attestation`` with the evidence -> the server's verdict.

The device decides nothing: the verdict is the server's (trust/verdict.py). Posture
facts come from :func:`bastion.device.posture.collect_posture` (the running kernel)
or are given by the caller.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bastion.device.provision import DeviceIdentity
from bastion.errors import FormatError
from bastion.io.http import HttpClient
from bastion.tpm.base import PcrSelection, Tpm, TpmKey
from bastion.trust.verdict import Evidence

CHALLENGE_PATH = "/v1/device/attestation/challenge"
EVIDENCE_PATH = "/v1/device/attestation"


def build_evidence(  # noqa: PLR0917 - evidence has six parts
    tpm: Tpm,
    ak: TpmKey,
    nonce: bytes,
    selection: PcrSelection,
    eventlog: bytes,
    posture: Mapping[str, Any] | None = None,
) -> Evidence:
    """Quote ``selection`` with ``nonce`` and package it with the log and posture."""
    quoted = tpm.quote(ak, nonce, selection)
    values = tpm.pcr_read(selection)
    return Evidence(
        ak_public=ak.public,
        quote=quoted.attest,
        signature=quoted.signature,
        bank=selection.bank,
        pcrs=values,
        eventlog=eventlog,
        posture=dict(posture or {}),
    )


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise FormatError(f"{what} is not base64: {exc}") from exc


def attest(
    tpm: Tpm,
    identity: DeviceIdentity,
    http: HttpClient,
    eventlog: bytes,
    posture: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One attestation round (module docstring); returns the server's verdict JSON.

    A client that signs its requests in the TPM (the agent's) needs no API key."""
    token = None if http.signer is not None else identity.api_key(tpm)
    challenge = http.call_object("POST", CHALLENGE_PATH, {}, token=token)
    nonce = _unb64(challenge.get("nonce"), "attestation challenge nonce")
    selection = PcrSelection.parse(str(challenge.get("pcr_selection", "")))
    evidence = build_evidence(tpm, identity.ak, nonce, selection, eventlog, posture)
    return http.call_object("POST", EVIDENCE_PATH, {"evidence": evidence.to_json()}, token=token)


def sim_eventlog(dev: Path) -> bytes:
    """The raw event log of a sim device's last boot: the firmware's, followed by what
    userspace measured after the kernel started (systemd-pcrphase on the EFI chain), so
    that it replays to the PCRs a quote covers."""
    from bastion.device.boot import read_eventlog
    from bastion.device.boot.efi_chain import USERSPACE_LOG_FILE
    from bastion.device.platform.sim import SimPlatform
    from bastion.formats import eventlog as el

    log = read_eventlog(dev)
    userspace = SimPlatform(dev).load(USERSPACE_LOG_FILE)
    if userspace:
        log = el.EventLog(log.spec, log.events + el.parse(userspace).events)
    return log.to_bytes()
