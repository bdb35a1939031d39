"""What the agent's commands do to the device, through the command runner.

:class:`Actions` is the narrow interface the agent calls; :class:`SystemActions` is the
real device's (systemd through :class:`~bastion.io.runner.CommandRunner`):

* ``reboot`` -> ``systemctl reboot``;
* ``restart_service(unit)`` -> ``systemctl restart -- UNIT`` (the server already
  refused names outside the unit pattern; the agent checks again);
* ``check_update`` -> the update hook: an executable given with ``--update-hook``
  (the updater lands later); without one the command fails saying so;
* ``collect_logs`` -> the last ``JOURNAL_LINES`` journal lines (``journalctl``);
* ``wipe`` -> the wipe hook (``--wipe-hook``), which must erase the data volume and
  reboot into provisioning; without one the command fails saying so. The agent
  itself deletes its identity first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from bastion.errors import ConfigError, FormatError
from bastion.io.runner import CommandRunner

UNIT_PATTERN = re.compile(r"^[A-Za-z0-9:_.@-]{1,128}\.(service|target|socket|timer)$")
JOURNAL_LINES = 500


class Actions(Protocol):
    """The device-changing half of the commands."""

    def reboot(self) -> None: ...

    def restart_service(self, unit: str) -> str: ...

    def check_update(self) -> str: ...

    def collect_logs(self) -> list[str]: ...

    def wipe(self) -> None: ...


def check_unit(unit: str) -> str:
    """``unit`` if it is a plain systemd unit name, else FormatError."""
    if not UNIT_PATTERN.match(unit):
        raise FormatError(f"{unit!r} is not a systemd unit name like 'app.service'")
    return unit


class SystemActions:
    """A real device: systemd, journald and the configured hooks."""

    def __init__(
        self,
        runner: CommandRunner,
        *,
        update_hook: Path | None = None,
        wipe_hook: Path | None = None,
    ) -> None:
        self.runner = runner
        self.update_hook = update_hook
        self.wipe_hook = wipe_hook

    def reboot(self) -> None:
        self.runner.run(["systemctl", "reboot"])

    def restart_service(self, unit: str) -> str:
        self.runner.run(["systemctl", "restart", "--", check_unit(unit)])
        return f"restarted {unit}"

    def check_update(self) -> str:
        if self.update_hook is None:
            raise ConfigError("no update hook is configured (bastion agent run --update-hook)")
        result = self.runner.run([str(self.update_hook)])
        return result.stdout.decode(errors="replace")[-4000:]

    def collect_logs(self) -> list[str]:
        result = self.runner.run(
            ["journalctl", "--no-pager", "-o", "short-iso", "-n", str(JOURNAL_LINES)]
        )
        return result.stdout.decode(errors="replace").splitlines()

    def wipe(self) -> None:
        if self.wipe_hook is None:
            raise ConfigError("no wipe hook is configured (bastion agent run --wipe-hook)")
        self.runner.run([str(self.wipe_hook)])
