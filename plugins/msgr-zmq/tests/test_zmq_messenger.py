"""Messengers over zmq: verbs round trip, and the transport is chosen by
the configured preference order when a peer offers several."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from msgr_zmq import ZmqLink

from msgr_core import Messenger


def _config(name: str, listen: list[str], transports: list[str], **extra: Any) -> dict[str, Any]:
    return {"messenger": {"name": name, "listen": listen, "transports": transports}, **extra}


async def test_verbs_over_zmq_tcp() -> None:
    a = Messenger.from_config(_config("zmq-a", ["zmq+tcp://127.0.0.1:0"], ["zmq+tcp"]))
    b = Messenger.from_config(_config("zmq-b", ["zmq+tcp://127.0.0.1:0"], ["zmq+tcp"], zmq={"heartbeat_ivl": 0.5}))
    async with a, b:
        b.register_handler("echo", lambda msg: msg.payload)
        b.register_handler("add", lambda msg: msg.payload["x"] + msg.payload["y"])
        peer = b.addresses[0]
        assert peer.startswith("zmq+tcp://127.0.0.1:")
        assert await a.send_message("echo", peer, b"hi", timeout=10) == b"hi"
        assert await a.send_message("add", peer, {"x": 2, "y": 3}, timeout=10) == 5
        big = bytes(range(256)) * 8192  # 2 MiB: goes in parts, without copies
        assert await a.send_message("echo", peer, big, timeout=10) == big
        replies = await asyncio.gather(*(a.send_message("echo", peer, b"%d" % i, timeout=10) for i in range(500)))
        assert replies == [b"%d" % i for i in range(500)]
        conn = a.get_connection(peer)
        assert isinstance(conn.link, ZmqLink)
        # and back, by name, over the link b accepted
        a.register_handler("whoami", lambda msg: "zmq-a")
        assert await b.send_message("whoami", "zmq-a", timeout=10) == "zmq-a"


@pytest.fixture
def tcp_installed() -> None:
    pytest.importorskip("msgr_tcp", reason="the preference test needs the tcp transport too")


@pytest.mark.parametrize(
    ("order", "expected"),
    [(["zmq+tcp", "tcp"], "zmq+tcp"), (["tcp", "zmq+tcp"], "tcp")],
)
async def test_transport_preference(tcp_installed, order: list[str], expected: str) -> None:
    """A listens on tcp and zmq+tcp; B learns both addresses in a first
    session, then reaches A by name over its preferred transport."""
    server = Messenger.from_config(
        _config("pref-a", ["tcp://127.0.0.1:0", "zmq+tcp://127.0.0.1:0"], ["tcp", "zmq+tcp"])
    )
    client = Messenger.from_config(_config("pref-b", [], order))
    async with server, client:
        server.register_handler("echo", lambda msg: msg.payload)
        assert {addr.split("://")[0] for addr in server.addresses} == {"tcp", "zmq+tcp"}
        other = next(addr for addr in server.addresses if not addr.startswith(expected + "://"))
        # a first session over the *other* transport teaches B A's addresses
        assert await client.send_message("echo", other, b"1", timeout=10) == b"1"
        client.get_connection(other).mark_down()
        assert await client.send_message("echo", "pref-a", b"2", timeout=10) == b"2"
        conn = client.get_connection("pref-a")
        assert conn.address.startswith(expected + "://")
        assert conn.link is not None
        assert isinstance(conn.link, ZmqLink) == (expected == "zmq+tcp")


async def test_a_crashed_messenger_restarts_on_its_address_at_once() -> None:
    """A messenger aborted (as a crash would) while a peer keeps sending to it
    can be restarted on the same address in the same process at once:
    libzmq frees the address in its I/O thread after the socket is closed,
    and listening waits for that instead of failing with "address already
    in use" (it did in about half of such restarts)."""
    from msgr_core import Dispatcher

    restarted = asyncio.Queue[str]()

    class Watch(Dispatcher):
        def handle_remote_reset(self, conn: Any) -> None:
            restarted.put_nowait(conn.peer_name)

    a = Messenger.from_config(_config("zmq-a", ["zmq+tcp://127.0.0.1:0"], ["zmq+tcp"]))
    a.add_dispatcher(Watch())
    async with a:
        b = Messenger.from_config(_config("zmq-b", ["zmq+tcp://127.0.0.1:0"], ["zmq+tcp"]))
        await b.start()
        address = b.addresses[0]
        for i in range(6):
            assert await a.send_message("msgr.ping", address, timeout=10) is not None
            await b.abort()
            a.get_connection(address).send_nowait("nobody-home", b"x")  # a redials meanwhile
            b = Messenger.from_config(_config("zmq-b", [address], ["zmq+tcp"]))
            await b.start()  # raised OSError: address already in use
            assert b.addresses == [address], i
            # a's redial reaches the new incarnation: a resets its old session
            assert await asyncio.wait_for(restarted.get(), 10) == "zmq-b"
        await b.stop()
