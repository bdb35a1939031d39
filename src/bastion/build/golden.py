"""Golden values of a signed image: what a device booting it must measure, signed.

``golden_values(path, trust)`` verifies the image first (image signature, bootloader,
boot unit, verity signature: :func:`bastion.build.image.verify_image`), then replays
the boot chain's own measurement lists (device/measure.py) over the image's bytes: the
PCRs (:func:`bastion.device.measure.predict`) and each measured component
(:func:`bastion.trust.golden.components_of`). ``sign_golden`` wraps them in an envelope
signed by the product's image key; the fleet server accepts only such statements
(``bastion fleet golden set``) and the verifier uses nothing else.
"""

from __future__ import annotations

from pathlib import Path

from bastion.build import image as img
from bastion.device import measure
from bastion.errors import FormatError
from bastion.formats import bootunit as bu
from bastion.trust.golden import GoldenValues, components_of


def golden_values(path: Path, trust: img.ImageTrust, slot: str = "a") -> GoldenValues:
    """Verify ``path`` with ``trust`` and return the golden values of booting ``slot``."""
    doc = img.verify_image(path, trust, full=False)
    layout = img.read_layout(path)
    archive = img.read_archive(path, layout)
    if f"unit.{slot}" not in archive.names():
        raise FormatError(f"image {path} has no slot {slot}")
    unit = bu.parse_unit(archive.get(f"unit.{slot}"))
    events = measure.boot_events(
        img.platform_key_hash(archive.get("loader.key")),
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
