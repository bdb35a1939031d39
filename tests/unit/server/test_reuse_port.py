"""One listening socket per worker (ADR 0046): the port holder and the worker's listener.

Negative table first: an address another socket holds (a plain one, or another
server's of the same user), a name that does not resolve, and a worker that cannot
bind (the error names the address)."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator

import pytest

from bastion.errors import ConfigError
from bastion.server.tlsproto import (
    ReusePortListener,
    listen_reuse_port,
    reserve_port,
)


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port held by a plain listening socket (no SO_REUSEPORT)."""
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(1)
        yield int(plain.getsockname()[1])


def test_a_port_another_socket_holds_is_refused_with_the_address(taken: int) -> None:
    with pytest.raises(ConfigError, match=rf"--listen 127\.0\.0\.1:{taken}: cannot bind"):
        reserve_port("127.0.0.1", taken)


def test_a_port_another_server_of_this_user_listens_on_is_refused() -> None:
    """SO_REUSEPORT would let the new server join the running one (same user) and take
    half its connections; it is refused as with one shared socket."""
    with socket.socket() as running:
        running.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        running.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        running.bind(("127.0.0.1", 0))
        running.listen(1)
        port = running.getsockname()[1]
        with pytest.raises(
            ConfigError, match=rf"127\.0\.0\.1:{port}: cannot bind: Address already"
        ):
            reserve_port("127.0.0.1", port)


def test_a_port_left_in_time_wait_is_taken_again() -> None:
    """A server restarted right after it stopped finds its port: its workers' sockets
    (and so their connections' TIME_WAIT ends) allow reuse."""
    with reserve_port("127.0.0.1", 0) as holder:
        server = listen_reuse_port(holder.family, holder.getsockname(), 16)
    with server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    with reserve_port("127.0.0.1", port) as holder:
        assert holder.getsockname()[1] == port


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"--listen no-such-host\.invalid:8443"):
        reserve_port("no-such-host.invalid", 8443)


def test_a_worker_that_cannot_listen_says_where(taken: int) -> None:
    with pytest.raises(ConfigError, match=rf"worker cannot listen on \('127\.0\.0\.1', {taken}\)"):
        listen_reuse_port(socket.AF_INET, ("127.0.0.1", taken), 16)


def test_the_holder_keeps_the_port_and_takes_no_connection() -> None:
    with reserve_port("127.0.0.1", 0) as holder:
        port = holder.getsockname()[1]
        assert port != 0
        assert holder.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        # a program without SO_REUSEPORT cannot take the port from under the workers
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        # nothing listens yet: a connection is refused, not left waiting on the holder
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_each_unpickled_listener_is_a_socket_of_its_own_on_the_holders_port() -> None:
    with reserve_port("127.0.0.1", 0) as holder:
        listener = ReusePortListener(holder.family, holder.getsockname(), 128)
        data = pickle.dumps(listener)  # what the supervisor sends each worker
        first, second = pickle.loads(data), pickle.loads(data)
        try:
            assert isinstance(first, socket.socket)
            assert first.fileno() != second.fileno()
            assert first.getsockname() == second.getsockname() == holder.getsockname()
            for sock in (first, second):
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            # connections reach the listening sockets, spread over both
            clients = [socket.create_connection(holder.getsockname(), timeout=5) for _ in range(64)]
            first.setblocking(False)
            second.setblocking(False)
            accepted = {id(first): 0, id(second): 0}
            for sock in (first, second):
                while True:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        break
                    conn.close()
                    accepted[id(sock)] += 1
            for client in clients:
                client.close()
            assert sum(accepted.values()) == 64
            assert all(count > 0 for count in accepted.values()), accepted
        finally:
            first.close()
            second.close()
