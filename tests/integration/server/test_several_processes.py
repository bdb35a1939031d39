"""Several real server processes on one PostgreSQL database (ADR 0034).

* two ``bastion server`` processes (two ports, one data folder, one database): login
  attempts spread over both hit the shared limit exactly as one process would;
* one-time codes stay one-time across processes: a TOTP code spent on one process and a
  recovery code used on one are refused by the other;
* ``bastion server --workers 2`` serves on one port and enforces the same shared limit;
  ``--workers 2`` on SQLite is refused;
* each worker listens on a socket of its own (ADR 0046): a burst of connections is
  held by both workers and every one is answered; an address already taken is refused
  before any worker starts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from bastion.cli.main import main
from bastion.server.auth import totp

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[3] / "src"
PASSWORD = "correct horse battery"
LOGIN_BURST = 6


@pytest.fixture
def pg_url(pg_database: str | None) -> Iterator[str]:
    if pg_database is None:
        pytest.skip("PostgreSQL is unreachable (Debian package 'postgresql')")
    yield f"postgresql://postgres@127.0.0.1:5432/{pg_database}"
    from conftest import _pg_wipe

    _pg_wipe(pg_database)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_SERVER_")}
    env.update(
        PYTHONPATH=str(SRC),
        BASTION_SERVER_ARGON2_TIME_COST="1",
        BASTION_SERVER_ARGON2_MEMORY_KIB="8",
        BASTION_SERVER_ARGON2_PARALLELISM="1",
        BASTION_SERVER_LOGIN_RATE_PER_SECOND="0.001",
        BASTION_SERVER_LOGIN_BURST=str(LOGIN_BURST),
        BASTION_SERVER_LOGIN_FAILURES_FREE="1000",
    )
    env.update(extra)
    return env


Start = Callable[..., str]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Start]:
    """Start ``bastion server`` processes; each is stopped by its PID at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(database_url: str, *extra: str, **env: str) -> str:
        port = _free_port()
        log = open(tmp_path / f"server-{port}.log", "wb")  # noqa: SIM115 - closed with the test
        argv = [
            sys.executable,
            "-c",
            "from bastion.cli.main import entry; entry()",
            "server",
            "--data-dir",
            str(tmp_path / "data"),
            "--database-url",
            database_url,
            "--listen",
            f"127.0.0.1:{port}",
            *extra,
        ]
        proc = subprocess.Popen(
            argv, env=_env(**env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(
                    f"server exited {proc.returncode}: "
                    + (tmp_path / f"server-{port}.log").read_text()[-2000:]
                )
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"server on {url} never answered /v1/health")

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _login(url: str, email: str, **extra: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/auth/login", json={"email": email, "password": PASSWORD, **extra}, timeout=30
    )


def _statuses(urls: list[str], n: int) -> list[int]:
    return [_login(urls[i % len(urls)], f"nobody{i}@example.org").status_code for i in range(n)]


def test_logins_over_two_processes_hit_one_shared_limit(pg_url: str, start_server: Start) -> None:
    first = start_server(pg_url)
    second = start_server(pg_url)
    statuses = _statuses([first, second], 3 * LOGIN_BURST)
    # exactly what one process gives: `burst` attempts judged (401), the rest throttled
    assert statuses[:LOGIN_BURST] == [401] * LOGIN_BURST
    assert statuses[LOGIN_BURST:] == [429] * (2 * LOGIN_BURST)


def test_one_time_codes_are_one_time_across_processes(
    pg_url: str, start_server: Start, tmp_path: Path
) -> None:
    first = start_server(pg_url, BASTION_SERVER_LOGIN_BURST="100")
    second = start_server(pg_url, BASTION_SERVER_LOGIN_BURST="100")
    password_file = tmp_path / "pw"
    password_file.write_text(PASSWORD)
    argv = ["server", "user", "add", "otp@example.org", "--password-file", str(password_file)]
    argv += ["--data-dir", str(tmp_path / "data"), "--database-url", pg_url]
    assert main(argv) == 0
    session = {"Authorization": f"Bearer {_login(first, 'otp@example.org').json()['token']}"}
    secret = httpx.post(f"{first}/v1/me/totp", headers=session).json()["secret"]
    step = int(time.time()) // 30
    code = totp.code_at(secret, step)
    confirm = httpx.post(f"{first}/v1/me/totp/confirm", headers=session, json={"code": code})
    if confirm.status_code != 200:  # the step turned over between reading time and confirming
        step += 1
        code = totp.code_at(secret, step)
        confirm = httpx.post(f"{first}/v1/me/totp/confirm", headers=session, json={"code": code})
    assert confirm.status_code == 200, confirm.text
    recovery = confirm.json()["recovery_codes"][0]
    # the code spent on the first process is refused by the second
    replay = _login(second, "otp@example.org", totp=code)
    assert replay.status_code == 401, replay.text
    # a recovery code works once, on whichever process sees it first
    assert _login(first, "otp@example.org", recovery_code=recovery).status_code == 200
    again = _login(second, "otp@example.org", recovery_code=recovery)
    assert again.status_code == 401, again.text


def test_workers_two_share_the_port_and_the_limit(pg_url: str, start_server: Start) -> None:
    url = start_server(pg_url, "--workers", "2")
    statuses = _statuses([url], 3 * LOGIN_BURST)
    assert statuses[:LOGIN_BURST] == [401] * LOGIN_BURST
    assert statuses[LOGIN_BURST:] == [429] * (2 * LOGIN_BURST)


def test_workers_on_sqlite_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["server", "--data-dir", str(tmp_path / "d"), "--workers", "2"]
    assert main(argv) != 0
    assert "--workers 2 needs PostgreSQL" in capsys.readouterr().err


def _established_by_pid(port: int) -> dict[int, int]:
    """pid -> established TCP connections on local ``port`` that the pid holds."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    held: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        count = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
        if count:
            held[int(entry.name)] = count
    return held


def test_workers_two_each_take_a_share_of_a_connection_burst(
    pg_url: str, start_server: Start
) -> None:
    url = start_server(
        pg_url,
        "--workers",
        "2",
        BASTION_SERVER_RATE_PER_SECOND="100000",
        BASTION_SERVER_RATE_BURST="100000",
    )
    port = int(url.rsplit(":", 1)[1])
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(64)]
    try:
        for client in clients:
            client.sendall(b"GET /v1/health HTTP/1.1\r\nHost: bastion\r\n\r\n")
        for client in clients:  # none is left waiting on a socket nobody accepts from
            assert client.recv(64).startswith(b"HTTP/1.1 200"), "a connection got no answer"
        held = _established_by_pid(port)
        held.pop(os.getpid(), None)  # this test's own ends
        # with one shared socket the first worker to wake took the whole burst
        assert len(held) == 2, held
        assert sum(held.values()) == 64
    finally:
        for client in clients:
            client.close()


def test_workers_on_a_taken_address_are_refused_before_starting(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = ["server", "--data-dir", str(tmp_path / "d"), "--database-url", pg_url]
        argv += ["--listen", f"127.0.0.1:{port}", "--workers", "2"]
        assert main(argv) != 0
    err = capsys.readouterr().err
    assert f"--listen 127.0.0.1:{port}: cannot bind: Address already in use" in err
