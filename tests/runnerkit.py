"""A command runner that records argv and answers from a script, for adapter tests.

Used only where the real tool cannot run here (device-mapper is absent on this host);
tests that can run the real veritysetup/cryptsetup do so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bastion.errors import CommandError
from bastion.io.runner import CommandResult, CommandRunner


class RecordingRunner(CommandRunner):
    """Records every argv (and stdin); answers ``(returncode, stdout, stderr)`` from
    ``answers`` by the first two argv words (``("veritysetup", "open")``), else 0."""

    def __init__(self, answers: Mapping[tuple[str, str], tuple[int, str, str]] | None = None):
        super().__init__()
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.answers = dict(answers or {})

    @property
    def argvs(self) -> list[list[str]]:
        return [argv for argv, _ in self.calls]

    def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        self.calls.append((list(argv), input))
        code, out, err = self.answers.get((argv[0], argv[1]), (0, "", ""))
        result = CommandResult(tuple(argv), code, out.encode(), err.encode())
        if check and code:
            raise CommandError(f"{argv[0]} exited with {code}", argv=list(argv), returncode=code)
        return result
