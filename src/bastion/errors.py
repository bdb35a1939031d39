"""The one exception tree of bastion, split by who is at fault.

Every error bastion raises derives from :class:`BastionError`. Callers catch the
branch they can handle; the CLI maps each branch to an exit code and the server
maps each to an HTTP status, in one place each. Foreign exceptions are wrapped at
the adapter that met them (``raise FormatError(...) from exc``). Messages name the
object and give expected versus actual.
"""

from __future__ import annotations


class BastionError(Exception):
    """Root of every error bastion raises on purpose."""

    #: process exit code the CLI uses for this branch
    exit_code: int = 1


# --- the input is malformed -------------------------------------------------------------


class FormatError(BastionError):
    """Bytes or text that do not follow the format they claim (truncated, out of range, ...)."""

    exit_code = 3


class LimitError(FormatError):
    """Untrusted input exceeds a bound from :mod:`bastion.limits`."""


# --- the input is well-formed but must not be trusted -----------------------------------


class VerificationError(BastionError):
    """A security check failed: the thing is well-formed but not what was expected."""

    exit_code = 2


class SignatureError(VerificationError):
    """A signature is missing, invalid, from an untrusted key, or below the threshold."""


class DigestMismatchError(VerificationError):
    """A digest over data differs from the trusted digest.

    ``area`` says what was being checked (``"data"``, ``"hash"``, ``"root"``, ...),
    ``block`` the block number within that area and ``level`` the tree level,
    where those apply, so a report can point at the damage.
    """

    def __init__(
        self,
        message: str,
        *,
        area: str | None = None,
        block: int | None = None,
        level: int | None = None,
    ) -> None:
        super().__init__(message)
        self.area = area
        self.block = block
        self.level = level


class RollbackError(VerificationError):
    """A version or counter is lower than the one already accepted."""


class ExpiredError(VerificationError):
    """A credential, certificate or metadata is outside its validity period."""


class MixAndMatchError(VerificationError):
    """Metadata that does not match the version or hashes its parent role lists for it.

    TUF's mix-and-match attack: a snapshot other than the one the timestamp names, or a
    targets file other than the one the snapshot names.
    """


class IncompatibleError(VerificationError):
    """A release is not for this device: another product, hardware or channel."""


class RevokedError(VerificationError):
    """A credential or certificate has been revoked."""


class PolicyError(VerificationError):
    """A TPM policy or security profile refuses the operation (e.g. PCRs changed)."""


class TamperError(VerificationError):
    """The boot chain found a modified stage; carries the stage name."""

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage


# --- the caller is not allowed ----------------------------------------------------------


class AuthError(BastionError):
    """Authentication or authorization failed (wrong passphrase, key, token, role)."""

    exit_code = 4


class RateLimitError(AuthError):
    """Too many requests from one principal or address; ``retry_after`` is in seconds."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OidcRequiredError(AuthError):
    """An organisation lets its members act only with a login made through OIDC."""


class AttestationRequiredError(AuthError):
    """A device lacks a passing attestation verdict younger than its fleet's interval."""


class SignInRequiredError(AuthError):
    """A dashboard request carries no usable session cookie: the browser must sign in."""


class NotFoundError(BastionError):
    """A named object (device, key slot, token, file) does not exist."""

    exit_code = 5


class ConflictError(BastionError):
    """The operation conflicts with existing state (already exists, already written)."""

    exit_code = 6


# --- something outside bastion failed ---------------------------------------------------


class TransportError(BastionError):
    """Network or HTTP failure talking to another party."""

    exit_code = 7


class BackendError(BastionError):
    """A backend bastion drives (TPM, external command, database) failed."""

    exit_code = 8


class TpmError(BackendError):
    """The TPM (software or real) refused or failed a command.

    ``rc`` carries the TPM response code where one exists.
    """

    def __init__(self, message: str, *, rc: int | None = None) -> None:
        super().__init__(message)
        self.rc = rc


class CommandError(BackendError):
    """An external command failed; carries argv, exit code and the end of stderr."""

    def __init__(
        self, message: str, *, argv: list[str] | None = None, returncode: int | None = None
    ) -> None:
        super().__init__(message)
        self.argv = argv or []
        self.returncode = returncode


class ToolMissingError(BackendError):
    """A system tool bastion needs is not installed; names the Debian package."""

    def __init__(self, tool: str, package: str) -> None:
        super().__init__(f"{tool} not found: install the Debian package {package!r}")
        self.tool = tool
        self.package = package


class ConfigError(BastionError):
    """Bad configuration or command-line usage (unknown backend URI, bad flag value)."""

    exit_code = 9


class ReauthRequiredError(AuthError):
    """A security-relevant change needs a login (or re-authentication) made moments ago."""
