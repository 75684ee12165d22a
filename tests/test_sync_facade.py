"""The blocking facade (msgr_core.sync) over real TCP: sync <-> sync, sync <-> async."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from msgr_core import Messenger
from msgr_core.errors import MessengerStopped, PeerUnreachable, RemoteError, RequestTimeout, UnknownVerb
from msgr_core.message import Message
from msgr_core.sync import LoopThreadError, SyncMessenger

WAIT = 10.0  # guard on every wait; the happy path never comes near it


def _server_config(name: str) -> dict[str, Any]:
    return {"messenger": {"name": name, "listen": ["tcp://127.0.0.1:0"]}}


@pytest.fixture
def pair() -> Iterator[tuple[SyncMessenger, SyncMessenger]]:
    server = SyncMessenger.from_config(_server_config("sync.server"))
    client = SyncMessenger.from_config({"messenger": {"name": "sync.client", "transports": ["tcp"]}})
    try:
        yield server, client
    finally:
        client.stop()
        server.stop()


def test_two_sync_messengers_request_oneway_and_connection(pair: tuple[SyncMessenger, SyncMessenger]) -> None:
    server, client = pair
    got: list[Any] = []
    arrived = threading.Event()
    handler_threads: set[str] = set()

    def add(msg: Message) -> int:
        handler_threads.add(threading.current_thread().name)
        return int(msg.payload["x"] + msg.payload["y"])

    def log(msg: Message) -> None:
        got.append(bytes(msg.payload))
        if len(got) == 3:
            arrived.set()

    server.register_handler("add", add)
    server.register_handler_oneway("log", log)
    addr = server.addresses[0]
    assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith(":0")

    assert client.send_message("add", addr, {"x": 2, "y": 3}, timeout=WAIT) == 5
    reply = client.request("add", addr, {"x": 40, "y": 2}, timeout=WAIT)
    assert reply.payload == 42
    client.send_message_oneway("log", "sync.server", b"one")  # by name, learned from the handshake
    conn = client.get_connection(addr)
    assert conn.peer_name == "sync.server"
    conn.send("log", b"two")
    conn.send_nowait("log", b"three")
    assert arrived.wait(WAIT)
    assert got == [b"one", b"two", b"three"]  # one handler thread: arrival order
    assert conn.request("add", {"x": 1, "y": 1}, timeout=WAIT).payload == 2
    # Plain handlers ran in the handler pool, never on the loop thread.
    assert handler_threads and all(n.startswith("msgr-sync-handler-") for n in handler_threads)
    assert client.stats["msgs_out"] >= 5


def test_typed_errors_propagate_unchanged(pair: tuple[SyncMessenger, SyncMessenger]) -> None:
    server, client = pair
    release = threading.Event()

    def boom(msg: Message) -> None:
        raise KeyError("no such object")

    def slow(msg: Message) -> str:
        release.wait(WAIT)
        return "late"

    server.register_handler("boom", boom)
    server.register_handler("slow", slow)
    addr = server.addresses[0]

    with pytest.raises(RemoteError) as remote:
        client.send_message("boom", addr, timeout=WAIT)
    assert remote.value.remote_type == "KeyError" and "no such object" in str(remote.value)
    with pytest.raises(UnknownVerb):
        client.send_message("nope", addr, timeout=WAIT)
    with pytest.raises(RequestTimeout):
        client.send_message("slow", addr, timeout=0.2)
    release.set()
    with pytest.raises(PeerUnreachable):
        client.send_message("add", "nobody.known", timeout=WAIT)
    # The session is still good after all that.
    server.register_handler("echo", lambda msg: msg.payload)
    assert client.send_message("echo", addr, "still here", timeout=WAIT) == "still here"


def test_async_handlers_and_handlers_that_call_the_facade(pair: tuple[SyncMessenger, SyncMessenger]) -> None:
    server, client = pair
    addr = server.addresses[0]

    async def double(msg: Message) -> int:
        await asyncio.sleep(0)
        return int(msg.payload) * 2

    server.register_handler("double", double)
    # A plain handler may block on the facade: here the server calls back into the client.
    client.register_handler("whoami", lambda msg: "sync.client")
    client_addr_holder: dict[str, str] = {}
    client2 = SyncMessenger.from_config(_server_config("sync.client2"))
    try:
        client2.register_handler("whoami", lambda msg: "sync.client2")
        client_addr_holder["a"] = client2.addresses[0]
        server.register_handler(
            "relay", lambda msg: server.send_message("whoami", client_addr_holder["a"], timeout=WAIT)
        )
        assert client.send_message("double", addr, 21, timeout=WAIT) == 42
        assert client.send_message("relay", addr, timeout=WAIT) == "sync.client2"
    finally:
        client2.stop()


def test_blocking_call_on_the_loop_thread_raises_instead_of_deadlocking(
    pair: tuple[SyncMessenger, SyncMessenger],
) -> None:
    server, client = pair
    addr = server.addresses[0]

    async def reentrant(msg: Message) -> Any:
        # A coroutine handler runs on the loop thread: the blocking facade must refuse.
        return server.send_message("x", addr, timeout=WAIT)

    server.register_handler("reentrant", reentrant)
    with pytest.raises(RemoteError) as exc:
        client.send_message("reentrant", addr, timeout=WAIT)
    assert exc.value.remote_type == "LoopThreadError"

    result: list[BaseException] = []
    done = threading.Event()

    def stop_from_loop() -> None:
        try:
            server.stop()
        except BaseException as e:
            result.append(e)
        done.set()

    server.loop.call_soon_threadsafe(stop_from_loop)
    assert done.wait(WAIT)
    assert len(result) == 1 and isinstance(result[0], LoopThreadError)
    assert server.running  # the refused stop() changed nothing


def test_stop_is_clean_and_idempotent() -> None:
    before = set(threading.enumerate())
    with SyncMessenger.from_config(_server_config("sync.ctx")) as ms:
        ms.register_handler("echo", lambda msg: msg.payload)
        addr = ms.addresses[0]
        assert ms.send_message("echo", addr, b"self", timeout=WAIT) == b"self"
        loop = ms.loop
    assert not ms.running
    assert loop.is_closed()
    ms.stop()  # idempotent
    with pytest.raises(MessengerStopped):
        ms.send_message("echo", addr, timeout=WAIT)
    # The loop thread and the handler threads are gone.
    assert {t for t in threading.enumerate() if t.name.startswith("msgr-sync-")} - before == set()


def test_a_bind_failure_on_start_leaves_no_thread() -> None:
    holder = SyncMessenger.from_config(_server_config("sync.holder"))
    try:
        taken = holder.addresses[0]
        with pytest.raises(OSError):
            SyncMessenger.from_config({"messenger": {"name": "sync.clash", "listen": [taken]}})
        assert not [t for t in threading.enumerate() if t.name == "msgr-sync-loop-sync.clash"]
    finally:
        holder.stop()


async def test_sync_and_async_messengers_talk_over_tcp() -> None:
    async with Messenger.from_config(_server_config("async.server")) as server:
        seen: list[Any] = []
        got = asyncio.Event()

        def note(msg: Message) -> None:
            seen.append(msg.payload)
            got.set()

        server.register_handler("mul", lambda msg: msg.payload[0] * msg.payload[1])
        server.register_handler_oneway("note", note)
        addr = server.addresses[0]
        # The facade blocks, so drive it from a worker thread: this loop keeps serving.
        sync = await asyncio.to_thread(SyncMessenger.from_config, _server_config("sync.peer"))
        try:
            assert await asyncio.to_thread(sync.send_message, "mul", addr, [6, 7], timeout=WAIT) == 42
            await asyncio.to_thread(sync.send_message_oneway, "note", addr, "hello")
            await asyncio.wait_for(got.wait(), WAIT)
            assert seen == ["hello"]
            # And the other way: the async messenger calls the sync one's handler.
            await asyncio.to_thread(sync.register_handler, "name", lambda msg: "sync.peer")
            sync_addr = (await asyncio.to_thread(lambda: sync.addresses))[0]
            assert await server.send_message("name", sync_addr, timeout=WAIT) == "sync.peer"
            with pytest.raises(UnknownVerb):
                await asyncio.to_thread(sync.send_message, "missing", addr, timeout=WAIT)
        finally:
            await asyncio.to_thread(sync.stop)


def test_a_facade_left_running_is_stopped_at_exit() -> None:
    script = """
import atexit
from msgr_core.sync import SyncMessenger
# atexit runs last-in first-out: this runs after the facade's own handler.
atexit.register(lambda: print("loop closed:", ms.loop.is_closed(), flush=True))
ms = SyncMessenger.from_config({"messenger": {"name": "left", "listen": ["tcp://127.0.0.1:0"]}})
ms.register_handler("echo", lambda msg: msg.payload)
print(ms.send_message("echo", ms.addresses[0], "ok", timeout=10), flush=True)
# no stop(): the atexit handler must stop it and the interpreter must exit
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ok", "loop closed: True"], proc.stdout
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
