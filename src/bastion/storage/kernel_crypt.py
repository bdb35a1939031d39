"""dm-crypt by the kernel: ``cryptsetup`` argv for the LUKS2 data volume, run, errors mapped.

On a real device (``linux`` platform) and in the QEMU guest the kernel decrypts the
data volume that bastion's userspace LUKS2 code formats and enrols
(:mod:`bastion.storage.luks2_volume`, :mod:`bastion.storage.signed_policy`). Opening it
is cryptsetup's job, and the TPM decision is systemd's token plugin's
(``libcryptsetup-token-systemd-tpm2.so``: the signed PCR 11 policy and the UKI's
``.pcrsig``), so this adapter only builds argv, runs it and maps the answer:

* :func:`open_token_argv` (``cryptsetup open --token-only``: the TPM token or nothing),
  :func:`open_key_argv` (a key or passphrase on stdin, never in argv or a file),
  :func:`close_argv`, :func:`status_argv`, :func:`test_key_argv`;
* :class:`KernelCrypt` runs them with ``check=False``; :func:`raise_for` maps a refused
  TPM unlock to ``PolicyError``, a wrong key to ``AuthError``, an existing mapping to
  ``ConflictError``, a missing device to ``NotFoundError``, the rest to
  ``CommandError``. Messages keep cryptsetup's last line (what the token plugin said).

``test_key`` (``--test-passphrase``) needs no device-mapper and runs on a host.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.errors import (
    AuthError,
    CommandError,
    ConflictError,
    NotFoundError,
    PolicyError,
)
from bastion.io.runner import CommandResult, CommandRunner
from bastion.limits import KERNEL_TOOL_MAX_OUTPUT
from bastion.storage.kernel_verity import check_device, check_name

TOOL = "cryptsetup"
TOKEN_TYPE = "systemd-tpm2"
#: what cryptsetup or systemd's token plugin print when the TPM will not release the key
_POLICY_REFUSALS = (
    "No usable token",
    "No key available",
    "policy digest does not match",
    "Couldn't find signature",
    "requires additional missing resource",
    "TPM2",
    "tpm2",
)


def open_token_argv(device: str, name: str, *, token_type: str | None = None) -> list[str]:
    """``cryptsetup open --token-only DEVICE NAME``: the token (TPM) or nothing."""
    argv = [TOOL, "open", "--token-only"]
    if token_type is not None:
        argv.append(f"--token-type={check_name(token_type)}")
    return [*argv, check_device(device), check_name(name)]


def open_key_argv(device: str, name: str) -> list[str]:
    """``cryptsetup open --key-file=- DEVICE NAME``: the key comes on stdin."""
    return [TOOL, "open", "--key-file=-", check_device(device), check_name(name)]


def test_key_argv(device: str) -> list[str]:
    """``cryptsetup open --test-passphrase --key-file=- DEVICE``: checks a key, maps nothing."""
    return [TOOL, "open", "--test-passphrase", "--key-file=-", check_device(device)]


def close_argv(name: str) -> list[str]:
    return [TOOL, "close", check_name(name)]


def status_argv(name: str) -> list[str]:
    return [TOOL, "status", check_name(name)]


def raise_for(result: CommandResult, what: str, *, token: bool = False) -> None:
    """Map a failed ``cryptsetup`` run to the error tree (nothing on exit 0)."""
    if result.returncode == 0:
        return
    err = result.stderr.decode("utf-8", "replace")[-KERNEL_TOOL_MAX_OUTPUT:].strip()
    last = err.splitlines()[-1] if err else f"exit code {result.returncode}"
    if "already exists" in err or "is busy" in err or result.returncode == 5:
        raise ConflictError(f"{what}: {last}")
    if "does not exist" in err or "No such file" in err or result.returncode == 4:
        raise NotFoundError(f"{what}: {last}")
    if token and any(w in err for w in _POLICY_REFUSALS):
        raise PolicyError(f"{what}: the TPM did not release the key: {last}")
    if result.returncode == 2 or "No key available" in err:
        raise AuthError(f"{what}: the key does not open any keyslot: {last}")
    raise CommandError(
        f"{what}: cryptsetup exited with {result.returncode}: {last}",
        argv=list(result.argv),
        returncode=result.returncode,
    )


class KernelCrypt:
    """Runs the argv above and maps failures (see the module docstring)."""

    def __init__(self, runner: CommandRunner | None = None) -> None:
        self.runner = runner or CommandRunner()

    def _run(
        self, argv: Sequence[str], what: str, *, key: bytes | None = None, token: bool = False
    ) -> CommandResult:
        result = self.runner.run(argv, input=key, check=False)
        raise_for(result, what, token=token)
        return result

    def open_with_token(self, device: str, name: str, *, token_type: str | None = None) -> str:
        """Unlock ``device`` through its LUKS2 token (TPM); ``/dev/mapper/NAME``."""
        self._run(
            open_token_argv(device, name, token_type=token_type),
            f"unlock of {device} by its TPM token",
            token=True,
        )
        return f"/dev/mapper/{name}"

    def open_with_key(self, device: str, name: str, key: bytes) -> str:
        """Unlock ``device`` with ``key`` (passphrase or recovery key, via stdin)."""
        self._run(open_key_argv(device, name), f"unlock of {device} with a key", key=key)
        return f"/dev/mapper/{name}"

    def test_key(self, device: str, key: bytes) -> None:
        """Raise AuthError unless ``key`` opens a keyslot of ``device`` (no mapping made)."""
        self._run(test_key_argv(device), f"key check on {device}", key=key)

    def is_active(self, name: str) -> bool:
        """Whether ``/dev/mapper/NAME`` is an active dm-crypt mapping."""
        result = self.runner.run(status_argv(name), check=False)
        if result.returncode == 0:
            return True
        if result.returncode == 4 or " is inactive" in result.text:
            return False
        raise_for(result, f"status of {name}")
        return False  # pragma: no cover - raise_for raised

    def close(self, name: str) -> None:
        self._run(close_argv(name), f"close of {name}")
