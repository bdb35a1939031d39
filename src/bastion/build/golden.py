"""Golden values of a signed image: what a device booting it must measure, signed.

``golden_values(path, trust)`` verifies the image first (image signature, bootloader,
boot unit, verity signature: :func:`bastion.trust.image.verify_image`), then replays
the boot chain's own measurement lists (trust/measure.py) over the image's bytes: the
PCRs (:func:`bastion.trust.measure.predict`) and each measured component
(:func:`bastion.trust.golden.components_of`). ``sign_golden`` wraps them in an envelope
signed by the product's image key; the fleet server accepts only such statements
(``bastion fleet golden set``) and the verifier uses nothing else.
"""

from __future__ import annotations

from pathlib import Path

from bastion.errors import FormatError
from bastion.formats import bootunit as bu
from bastion.formats.image import PART_BOOT, parse_archive
from bastion.storage.disk_image import DiskImage
from bastion.trust import image as timg
from bastion.trust import measure
from bastion.trust.golden import GoldenValues, components_of


def golden_values(path: Path, trust: timg.ImageTrust, slot: str = "a") -> GoldenValues:
    """Verify ``path`` with ``trust`` and return the golden values of booting ``slot``."""
    disk = DiskImage(path)
    doc = timg.verify_image(disk, trust, full=False)
    archive = parse_archive(disk.read_partition(PART_BOOT))
    if f"unit.{slot}" not in archive.names():
        raise FormatError(f"image {path} has no slot {slot}")
    unit = bu.parse_unit(archive.get(f"unit.{slot}"))
    events = measure.boot_events(
        timg.platform_key_hash(archive.get("loader.key")),
        archive.get("loader"),
        unit.sections(),
        bytes.fromhex(unit.cmdline_params().get("roothash", "")),
    )
    pcrs = measure.predict(events)
    components, _ = components_of(events)
    return GoldenValues(
        version=str(doc.get("version")),
        image_sha256=str(doc.get("sha256")),
        security_version=unit.security_version,
        pcrs={i: pcrs[i] for i in measure.GOLDEN_PCRS},
        components=components,
    )
