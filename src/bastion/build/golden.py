"""Golden values of a signed image: what a device booting it must measure, signed.

``golden_values_efi`` verifies the image signature first, then predicts the PCRs a sim
boot of one slot's UKI gives (:func:`bastion.trust.image.predict_efi_pcrs`) and names
each measured component from systemd-stub's PCR 11 events
(:func:`bastion.trust.golden.components_of`). ``sign_golden`` wraps them in an envelope
signed by the product's image key; the fleet server accepts only such statements
(``bastion fleet golden set``) and the verifier uses nothing else.
"""

from __future__ import annotations

from pathlib import Path

from bastion.errors import FormatError
from bastion.formats.uki import uki_sections
from bastion.storage.disk_image import DiskImage
from bastion.trust import image as timg
from bastion.trust import pcr11
from bastion.trust.golden import GoldenValues, components_of


def golden_values_efi(
    path: Path,
    trust: timg.ImageTrust,
    *,
    loader: bytes,
    uki: bytes,
    variables: dict[str, bytes],
) -> GoldenValues:
    """Golden values of a sim device booting the EFI image ``path`` (its signature checked
    with ``trust``): ``uki`` by ``loader`` with Secure Boot ``variables``. PCRs 0 (sim
    firmware), 4, 7, 9 and 11 once running; components from systemd-stub's PCR 11 events
    (kernel, os-release, cmdline, initrd, pcrpkey)."""
    doc = timg.verify_image_signature(DiskImage(path), trust)
    if doc.get("layout") != "efi":
        raise FormatError(f"image {path} is not an EFI image (its statement says otherwise)")
    sections = uki_sections(uki)
    osrel = dict(
        (k.strip(), v.strip().strip('"'))
        for k, _, v in (
            ln.partition("=") for ln in sections.get(".osrel", b"").decode("utf-8").splitlines()
        )
    )
    pcrs = timg.predict_efi_pcrs(loader, uki, variables)
    components, _ = components_of(pcr11.stub_events(sections))
    return GoldenValues(
        version=str(osrel.get("VERSION_ID") or doc.get("version")),
        image_sha256=str(doc.get("sha256")),
        security_version=int(osrel.get("BASTION_SECURITY_VERSION", "0") or 0),
        pcrs=pcrs,
        components=components,
    )
