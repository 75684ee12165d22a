"""Lossless sessions between real processes, under injected failures, a
connection-killing TCP proxy, a peer restart, a stopped peer, and a cut
link between two network namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from msgr_core import Dispatcher, Messenger
from msgr_core.errors import ConnectionReset

from .procs import HERE, Node, free_port

pytestmark = pytest.mark.slow

PAD = b"." * 56


def seq(i: int) -> bytes:
    return i.to_bytes(8, "big") + PAD


@contextlib.contextmanager
def node(name: str, **kw: Any) -> Iterator[Node]:
    n = Node(name, **kw)
    try:
        yield n
    finally:
        n.kill()


async def stream(conn: Any, total: int, *, yield_every: int = 16) -> None:
    for i in range(total):
        await conn.send("seq", seq(i))
        if i % yield_every == 0:
            await asyncio.sleep(0)  # one batch = one link operation for fault injection


@pytest.mark.parametrize("scheme", ["tcp", "zmq+tcp"])
async def test_200k_messages_with_socket_failures_every_50_operations(scheme: str) -> None:
    inject = {"socket_failures": 50}
    with node("receiver", listen=f"{scheme}://127.0.0.1:0", config={"inject": {**inject, "seed": 11}}) as peer:
        cfg = {"messenger": {"name": "sender", "transports": [scheme]}, "inject": {**inject, "seed": 12}}
        async with Messenger.from_config(cfg) as ms:
            conn = ms.get_connection(peer.address)
            total = 200_000
            await stream(conn, total)
            # ~4000 link failures to recover from: generous on a loaded machine
            report = (await conn.request("report", b"", timeout=300)).payload
            assert report["count"] == total and report["disorder"] == 0 and report["next"] == total
            assert ms.stats["injected_failures"] >= 20, ms.stats
            assert conn.stats["reconnects"] >= 20


class KillingProxy:
    """A TCP proxy that forwards to ``target`` and aborts each connection
    (both sides, at once) after a random number of bytes."""

    def __init__(self, target: str, seed: int) -> None:
        host, port = target[len("tcp://"):].rsplit(":", 1)
        self.target = (host, int(port))
        self.rng = random.Random(seed)
        self.kills = 0
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"tcp://{host}:{port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.transport.abort()
            return
        budget = [self.rng.randint(20_000, 2_000_000)]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await r.read(65536):
                    budget[0] -= len(data)
                    if budget[0] <= 0:
                        self.kills += 1
                        break
                    w.write(data)
                    await w.drain()
            cw.transport.abort()
            sw.transport.abort()

        await asyncio.gather(pipe(cr, sw), pipe(sr, cw))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_stream_and_requests_through_a_proxy_that_kills_connections() -> None:
    with node("receiver") as peer:
        proxy = KillingProxy(peer.address, seed=5)
        await proxy.start()
        try:
            cfg = {"messenger": {"name": "sender", "type": "client", "transports": ["tcp"]},
                   "policy": {"default": "lossless_client"}}
            async with Messenger.from_config(cfg) as ms:
                conn = ms.get_connection(proxy.address)
                total = 200_000
                await stream(conn, total, yield_every=64)
                report = (await conn.request("report", b"", timeout=120)).payload
                assert report["count"] == total and report["disorder"] == 0
                # request/response through the same proxy
                n_req = 5000

                async def worker(w: int) -> None:
                    for i in range(w, n_req, 32):
                        body = b"r%d" % i
                        assert bytes((await conn.request("count", body, timeout=120)).payload) == body

                await asyncio.gather(*(worker(w) for w in range(32)))
                report = (await conn.request("report", b"", timeout=120)).payload
                assert report["handled"] == n_req and report["twice"] == 0
                assert proxy.kills >= 10, proxy.kills
                assert conn.stats["reconnects"] >= 10
        finally:
            await proxy.close()


async def test_client_server_requests_with_socket_failures() -> None:
    with node("server", config={"policy": {"client": "stateful_server"}}) as peer:
        cfg = {"messenger": {"name": "client", "type": "client", "transports": ["tcp"]},
               "policy": {"default": "lossless_client"}, "inject": {"socket_failures": 50, "seed": 3}}
        async with Messenger.from_config(cfg) as ms:
            conn = ms.get_connection(peer.address)
            n_req = 20_000

            async def worker(w: int) -> None:
                for i in range(w, n_req, 64):
                    body = b"q%d" % i
                    assert bytes((await conn.request("count", body, timeout=120)).payload) == body

            await asyncio.gather(*(worker(w) for w in range(64)))
            report = (await conn.request("report", b"", timeout=60)).payload
            assert report["handled"] == n_req and report["twice"] == 0
            assert ms.stats["injected_failures"] >= 5
            status = await conn.request("msgr.status", b"", timeout=10)
            assert {s["policy"] for s in status.payload["sessions"]} == {"stateful_server"}


@pytest.mark.parametrize("scheme", ["tcp", "zmq+tcp"])
async def test_peer_restart_mid_stream(scheme: str) -> None:
    port = free_port()
    listen = f"{scheme}://127.0.0.1:{port}"
    remote_resets: list[str] = []

    class Watch(Dispatcher):
        def handle_remote_reset(self, conn: Any) -> None:
            remote_resets.append(conn.peer_name)

    cfg = {"messenger": {"name": "sender", "transports": [scheme]},
           "session": {"reconnect_min": 0.05, "reconnect_max": 0.2}}
    async with Messenger.from_config(cfg) as ms:
        ms.add_dispatcher(Watch())
        first = Node("receiver", listen=listen)
        try:
            conn = ms.get_connection(listen)
            await stream(conn, 20_000)
            first.proc.kill()  # SIGKILL mid-stream: messages are in flight
            first.close()
            for i in range(20_000, 20_500):  # queued for the dead incarnation
                conn.send_nowait("seq", seq(i))
            with node("receiver", listen=listen) as second:
                fresh = None
                while fresh is None:
                    try:
                        await conn.request("msgr.ping", b"", timeout=30)
                    except ConnectionReset:
                        fresh = ms.get_connection(listen)
                assert remote_resets == ["receiver"]
                assert fresh is not conn and conn.is_closed
                await stream(fresh, 1000)
                report = (await fresh.request("report", b"", timeout=60)).payload
                # only the new stream reached the new incarnation, from 0, in order
                assert report == {"count": 1000, "disorder": 0, "next": 1000, "handled": 0, "twice": 0}
                assert second.stop() == 0
        finally:
            first.kill()


async def test_a_stopped_receiver_never_holds_up_the_others() -> None:
    limits = {"max_queued_bytes": 1 << 20}
    peers = [Node(f"r{i}") for i in range(4)]
    try:
        cfg = {"messenger": {"name": "sender", "transports": ["tcp"]}, "limits": limits}
        async with Messenger.from_config(cfg) as ms:
            conns = [ms.get_connection(p.address) for p in peers]
            for c in conns:
                await c.request("msgr.ping", b"", timeout=30)
            stuck = peers[3]
            stuck.pause()  # SIGSTOP: alive, not reading
            total = 100_000
            stuck_task = asyncio.create_task(stream(conns[3], total))
            await asyncio.gather(*(stream(c, total) for c in conns[:3]))
            reports = await asyncio.gather(*(c.request("report", b"", timeout=60) for c in conns[:3]))
            assert all(r.payload["count"] == total and r.payload["disorder"] == 0 for r in reports)
            # the stuck peer's sender is held by its own bounded queue, nothing else
            assert not stuck_task.done()
            assert conns[3].queued_bytes <= limits["max_queued_bytes"]
            stuck.resume()
            try:
                await asyncio.wait_for(stuck_task, 120)
            finally:
                stuck_task.cancel()
            report = (await conns[3].request("report", b"", timeout=60)).payload
            assert report["count"] == total and report["disorder"] == 0
    finally:
        for p in peers:
            p.resume()
            p.kill()


# -- two hosts: network namespaces joined by a veth pair ----------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Namespaces msgr-a / msgr-b with link-local addresses on a veth pair
    and no route out; yields the namespace names."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed: network namespaces cannot be created")
    tag = f"{random.randrange(1 << 20):05x}"
    a, b = f"msgr-a-{tag}", f"msgr-b-{tag}"
    try:
        _ip("netns", "add", a)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", "name", f"vb{tag}", "netns", b)
        _ip("-n", a, "addr", "add", "169.254.77.1/30", "dev", f"va{tag}")
        _ip("-n", b, "addr", "add", "169.254.77.2/30", "dev", f"vb{tag}")
        for ns, dev in ((a, f"va{tag}"), (b, f"vb{tag}")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_cut_link_between_two_hosts(two_hosts: tuple[str, str]) -> None:
    ns_a, ns_b = two_hosts
    dev_a = "va" + ns_a.rsplit("-", 1)[1]
    session = {"keepalive_interval": 0.2, "keepalive_timeout": 1.0, "reconnect_min": 0.1, "reconnect_max": 0.5}
    limits = {"connect_timeout": 1.0}
    receiver = Node("host-b", listen="tcp://169.254.77.2:0", config={"session": session, "limits": limits},
                    prefix=["ip", "netns", "exec", ns_b])
    try:
        total = 100_000
        client = subprocess.Popen(
            ["ip", "netns", "exec", ns_a, sys.executable, str(HERE / "stream_client.py"), receiver.address,
             str(total), json.dumps({"session": session, "limits": limits})],
            stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        events: list[dict[str, Any]] = []
        cut = False
        try:
            for line in client.stdout:
                ev = json.loads(line)
                events.append(ev)
                if ev["event"] == "progress" and ev["sent"] >= total // 4 and not cut:
                    _ip("-n", ns_a, "link", "set", dev_a, "down")  # the cable is pulled
                    cut = True
                elif ev["event"] == "link_down":
                    _ip("-n", ns_a, "link", "set", dev_a, "up")  # and plugged back in
                elif ev["event"] == "done":
                    break
        finally:
            client.stdout.close()
            client.wait(timeout=60)
        kinds = [e["event"] for e in events]
        assert "link_down" in kinds and "link_up" in kinds, kinds
        done = events[-1]
        assert done["event"] == "done"
        assert done["report"]["count"] == total and done["report"]["disorder"] == 0
        assert done["stats"]["reconnects"] >= 1
    finally:
        receiver.kill()

