"""The one spelling of a TPM backend in bastion, and ``open_tpm`` that opens it.

Accepted forms (the same on the CLI ``--tpm``, in configuration and in code):

* ``software:PATH``          the pure-Python TPM whose state lives in the file PATH
* ``swtpm:host=H,port=P``    a swtpm over TCP (control channel on P+1), via tpm2-pytss
* ``device:/dev/tpmrm0``     a kernel TPM device (``/dev/tpmrmN`` or ``/dev/tpmN``), via tpm2-pytss

No spec (``None`` or empty) means the software TPM in the default state folder:
``$BASTION_HOME/tpm.state``, else ``$XDG_STATE_HOME/bastion/tpm.state``, else
``~/.local/state/bastion/tpm.state``. The ``swtpm:`` and ``device:`` forms are also
valid libtss2 TCTI strings, so they work unchanged in ``TPM2TOOLS_TCTI``.
``parse_tpm_uri`` is pure; ``open_tpm`` imports the backend only when asked for it.
"""

from __future__ import annotations

import enum
import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bastion.errors import AuthError, ConfigError, NotFoundError
from bastion.tpm.base import Tpm

ACCEPTED = "software:PATH, swtpm:host=H,port=P or device:/dev/tpmrm0"
STATE_FILE = "tpm.state"
_HOST_RE = re.compile(r"^[A-Za-z0-9.\-:\[\]]{1,253}$")
_DEVICE_RE = re.compile(r"^/dev/tpm(rm)?[0-9]{1,3}$")


class TpmKind(enum.StrEnum):
    """Which backend a TPM URI names."""

    SOFTWARE = "software"
    SWTPM = "swtpm"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class TpmUri:
    """A parsed TPM URI. ``path`` for software/device, ``host``/``port`` for swtpm."""

    kind: TpmKind
    path: Path | None = None
    host: str | None = None
    port: int | None = None

    @property
    def tcti(self) -> str:
        """The libtss2 TCTI string (swtpm and device only)."""
        if self.kind is TpmKind.SWTPM:
            return f"swtpm:host={self.host},port={self.port}"
        if self.kind is TpmKind.DEVICE:
            return f"device:{self.path}"
        raise ConfigError("the software TPM has no TCTI")

    def __str__(self) -> str:
        if self.kind is TpmKind.SOFTWARE:
            return f"software:{self.path}"
        return self.tcti


def bastion_state_dir() -> Path:
    """Where the default software TPM (and other device state) lives."""
    home = os.environ.get("BASTION_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "bastion"


def parse_tpm_uri(spec: str | None, *, default_state_dir: Path | None = None) -> TpmUri:
    """Parse a TPM URI; ConfigError naming the accepted forms on anything else."""
    if spec is None or not spec.strip():
        folder = default_state_dir if default_state_dir is not None else bastion_state_dir()
        return TpmUri(TpmKind.SOFTWARE, path=folder / STATE_FILE)
    text = spec.strip()
    scheme, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(f"TPM {text!r}: expected {ACCEPTED}")
    if scheme == "software":
        return TpmUri(TpmKind.SOFTWARE, path=Path(rest).expanduser())
    if scheme == "device":
        if not _DEVICE_RE.match(rest):
            raise ConfigError(f"TPM device {rest!r}: expected /dev/tpmrmN or /dev/tpmN")
        return TpmUri(TpmKind.DEVICE, path=Path(rest))
    if scheme == "swtpm":
        return _parse_swtpm(text, rest)
    raise ConfigError(f"TPM {text!r}: unknown backend {scheme!r}; expected {ACCEPTED}")


def _parse_swtpm(text: str, rest: str) -> TpmUri:
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, value = part.partition("=")
        if not eq or key not in ("host", "port") or key in fields or not value:
            raise ConfigError(f"TPM {text!r}: expected swtpm:host=H,port=P")
        fields[key] = value
    host = fields.get("host", "127.0.0.1")
    if not _HOST_RE.match(host):
        raise ConfigError(f"TPM {text!r}: bad host {host!r}")
    port_text = fields.get("port")
    if port_text is None or not port_text.isdigit() or not 0 < int(port_text) < 65535:
        raise ConfigError(f"TPM {text!r}: port must be 1..65534 (control is port+1)")
    return TpmUri(TpmKind.SWTPM, host=host, port=int(port_text))


def open_tpm(spec: str | None, *, default_state_dir: Path | None = None) -> Tpm:
    """Open the TPM named by ``spec`` (see the module docstring for the forms)."""
    uri = parse_tpm_uri(spec, default_state_dir=default_state_dir)
    if uri.kind is TpmKind.SOFTWARE:
        assert uri.path is not None
        try:
            software = importlib.import_module("bastion.tpm.software")
        except ImportError as exc:  # pragma: no cover - only before the backend exists
            raise ConfigError(f"the software TPM backend is not available: {exc}") from exc
        uri.path.parent.mkdir(parents=True, exist_ok=True)
        tpm: Tpm = software.SoftwareTpm(uri.path)
        return tpm
    if uri.kind is TpmKind.DEVICE:
        _check_device(uri.path)
    try:
        from bastion.tpm.tss import TssTpm
    except ImportError as exc:
        raise ConfigError(
            f"TPM {uri}: the tpm2-pytss backend is not installed "
            "(apt-get install libtss2-dev pkg-config; pip install 'bastion[tpm]')"
        ) from exc
    return TssTpm(uri.tcti)


def _check_device(path: Path | None) -> None:
    """A clear error for the two usual problems with a kernel TPM device."""
    assert path is not None
    if not path.exists():
        raise NotFoundError(
            f"TPM device {path} does not exist (no TPM, or its driver is not loaded; "
            "check /sys/class/tpm)"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise AuthError(
            f"TPM device {path} is not readable and writable by this user "
            "(run as root or add the user to the 'tss' group)"
        )
