"""Unified kernel images: the systemd EFI stub plus the sections it boots and measures.

A UKI (UAPI "Unified Kernel Image" spec, systemd-stub(7)) is the stub PE image with
extra sections appended: ``.osrel`` (os-release), ``.cmdline`` (the kernel command line),
``.pcrpkey`` (PEM public key of the signed PCR 11 policy), ``.pcrsig`` (its JSON
signature), ``.initrd`` and ``.linux`` (the kernel, itself an EFI PE image).
:func:`build_uki` lays them out the way ukify does (:func:`bastion.formats.pe.add_sections`:
next FileAlignment boundary in the file, next SectionAlignment boundary in memory,
``VirtualSize`` = content length, read-only initialized data, ``.linux`` marked as code)
and keeps the stub's own sections (``.sbat``, ``.sdmagic``) as they are.

Section file order here is ``.osrel .cmdline .uname .pcrpkey .pcrsig .initrd .linux``.
The file order does not matter to the stub: it measures sections into PCR 11 in its
own fixed order (see docs/uki.md). systemd-stub 252 (Debian 12) does not know
``.uname``; it is added only when given. Empty inputs are left out, as the stub skips
empty sections.

Building is pure (bytes in, bytes out). :func:`with_pcr_signature` adds ``.pcrpkey`` and
a ``.pcrsig`` over the predicted PCR 11 (:mod:`bastion.trust.pcr11`); Secure Boot signing
is :func:`bastion.trust.authenticode.sign_pe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from bastion.errors import ConfigError, FormatError
from bastion.formats.pe import (
    SCN_CNT_CODE,
    SCN_CNT_INITIALIZED_DATA,
    SCN_MEM_READ,
    NewSection,
    PeImage,
    add_sections,
)
from bastion.formats.uki import SECTION_ORDER
from bastion.trust.keys import load_public_key, public_key_to_pem
from bastion.trust.pcr11 import DEFAULT_PHASES, pcrsig_json, sign_pcr11
from bastion.trust.signer import Signer, key_id

#: IMAGE_SUBSYSTEM_EFI_APPLICATION
EFI_APPLICATION = 10
_DATA = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ
#: ukify marks .linux as code (old kernels run through the EFI handover protocol inline)
_CODE = SCN_CNT_CODE | SCN_MEM_READ


@dataclass(frozen=True, slots=True)
class UkiInputs:
    """The contents of a UKI's sections; ``None`` or empty leaves a section out."""

    linux: bytes
    osrel: bytes | None = None
    cmdline: bytes | None = None
    initrd: bytes | None = None
    pcrpkey: bytes | None = None
    pcrsig: bytes | None = None
    uname: bytes | None = None

    def sections(self) -> dict[str, bytes]:
        """Section name to content, in :data:`SECTION_ORDER`, empty ones left out."""
        values = {
            ".osrel": self.osrel,
            ".cmdline": self.cmdline,
            ".uname": self.uname,
            ".pcrpkey": self.pcrpkey,
            ".pcrsig": self.pcrsig,
            ".initrd": self.initrd,
            ".linux": self.linux,
        }
        return {name: values[name] or b"" for name in SECTION_ORDER if values[name]}


def with_pcr_signature(
    inputs: UkiInputs, signer: Signer, phases: Sequence[str] = DEFAULT_PHASES
) -> UkiInputs:
    """``inputs`` with ``.pcrpkey`` (the signer's public key as PEM, unless given) and a
    ``.pcrsig`` signing the predicted PCR 11 for each of ``phases`` (as ukify does)."""
    if inputs.pcrsig:
        raise ConfigError("the inputs already carry a .pcrsig")
    if inputs.pcrpkey:
        given = load_public_key(inputs.pcrpkey, what=".pcrpkey")
        if key_id(given) != signer.key_id:
            raise ConfigError(".pcrpkey is not the public key of the PCR signing key")
        with_key = inputs
    else:
        with_key = replace(inputs, pcrpkey=public_key_to_pem(signer.public_key()))
    signatures = sign_pcr11(with_key.sections(), signer, phases)
    return replace(with_key, pcrsig=pcrsig_json(signatures))


def check_stub(stub: PeImage) -> None:
    """FormatError unless ``stub`` is an unsigned EFI application without UKI sections."""
    if stub.subsystem != EFI_APPLICATION:
        raise FormatError(f"stub subsystem is {stub.subsystem}, expected 10 (EFI application)")
    if stub.certificates:
        raise FormatError("the stub is signed: build from the unsigned stub, sign the UKI")
    present = [name for name in SECTION_ORDER if stub.section(name) is not None]
    if present:
        raise FormatError(f"the stub already has UKI sections {present}")


def build_uki(stub: bytes, inputs: UkiInputs) -> bytes:
    """The unsigned UKI: ``stub`` with the sections of ``inputs`` appended."""
    if not inputs.linux:
        raise FormatError("a UKI needs a .linux section (the kernel image)")
    image = PeImage.parse(stub)
    check_stub(image)
    new = [
        NewSection(name, content, _CODE if name == ".linux" else _DATA)
        for name, content in inputs.sections().items()
    ]
    return add_sections(image, new)
