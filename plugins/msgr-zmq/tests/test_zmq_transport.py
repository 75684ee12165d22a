"""The zmq transport itself: registration, addresses, settings, connect
errors, listener close, the frame encodings, and the size limits."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import socket
from array import array

import msgr_zmq
import pluggy
import pytest
import zmq
from msgr_zmq import ZmqTransport, parse_address

from msgr_core import hookspecs
from msgr_core.errors import ConfigError, FrameTooLarge, LinkClosed, UnsupportedAddress
from msgr_core.transport import TransportOptions


def test_entry_points_and_hookimpl() -> None:
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="msgr.transports")}
    assert eps["zmq+tcp"] == "msgr_zmq" and eps["zmq+ipc"] == "msgr_zmq"
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(msgr_zmq)
    assert pm.hook.msgr_register_transports() == [[ZmqTransport]]
    assert ZmqTransport.schemes == ("zmq+tcp", "zmq+ipc")
    assert ZmqTransport.config_section == "zmq"
    assert set(ZmqTransport.test_addresses) == {"zmq+tcp", "zmq+ipc"}
    with pytest.raises(ValueError, match="zmq\\+tcp"):
        ZmqTransport("tcp", TransportOptions())


@pytest.mark.parametrize(
    ("address", "listen", "endpoint"),
    [
        ("zmq+tcp://127.0.0.1:0", True, "tcp://127.0.0.1:*"),
        ("zmq+tcp://127.0.0.1:5555", False, "tcp://127.0.0.1:5555"),
        ("zmq+tcp://[::1]:5555", False, "tcp://[::1]:5555"),
        ("zmq+tcp://*:0", True, "tcp://*:*"),
        ("zmq+tcp://example.com:80", False, "tcp://example.com:80"),
        ("zmq+ipc:///tmp/a%20b.sock", True, "ipc:///tmp/a b.sock"),
    ],
)
def test_parse_address(address: str, listen: bool, endpoint: str) -> None:
    assert parse_address(address, listen=listen)[1] == endpoint


@pytest.mark.parametrize(
    "address",
    [
        "not an address",
        "tcp://127.0.0.1:5555",
        "zmq+tcp://127.0.0.1",
        "zmq+tcp://:5555",
        "zmq+tcp://127.0.0.1:0",  # port 0: listen only
        "zmq+tcp://127.0.0.1:99999",
        "zmq+tcp://127.0.0.1:5555/path",
        "zmq+tcp://127.0.0.1:5555?x=1",
        "zmq+tcp://user@127.0.0.1:5555",
        "zmq+ipc://relative/path",
        "zmq+ipc:///",
        "zmq+ipc:///tmp/dir/",
    ],
)
async def test_bad_addresses(make_transport, make_rec, address: str) -> None:
    t = make_transport()
    with pytest.raises(UnsupportedAddress):
        await t.connect(address, make_rec())
    if address != "zmq+tcp://127.0.0.1:0":
        with pytest.raises(UnsupportedAddress):
            await t.listen(address, make_rec)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"nope": 1}, "zmq.nope"),
        ({"sndhwm": 0}, "zmq.sndhwm"),
        ({"rcvhwm": True}, "zmq.rcvhwm"),
        ({"linger": -1}, "zmq.linger"),
        ({"heartbeat_ivl": 2.0, "heartbeat_timeout": 1.0}, "zmq.heartbeat_timeout"),
        ({"tcp_keepalive": 1}, "zmq.tcp_keepalive"),
        ({"copy_threshold": "big"}, "zmq.copy_threshold"),
    ],
)
def test_bad_settings(settings: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ZmqTransport("zmq+tcp", TransportOptions(settings=settings))
    assert info.value.key == key


def test_settings_defaults_and_units() -> None:
    t = ZmqTransport("zmq+ipc", TransportOptions(settings={"heartbeat_ivl": 0.25, "linger": 0}))
    assert t.settings.heartbeat_ivl_ms == 250 and t.settings.linger_ms == 0
    assert t.settings.sndhwm == msgr_zmq.DEFAULTS["sndhwm"]
    assert t.settings.curve_client is None and t.settings.curve_server_secret is None


async def test_connect_refused_fast(make_transport, make_rec, tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        t = make_transport(connect_timeout=30.0)
        rec = make_rec()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(t.connect(f"zmq+tcp://127.0.0.1:{port}", rec), 5.0)
        assert not rec.made.done()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(t.connect(f"zmq+ipc://{tmp_path}/nobody.sock", rec), 5.0)


async def test_connect_times_out_on_a_silent_listener(make_transport, make_rec) -> None:
    """Something accepts the TCP connection but never speaks ZMTP."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError, match="connect_timeout"):
            await make_transport(connect_timeout=0.3).connect(f"zmq+tcp://127.0.0.1:{port}", make_rec())
    finally:
        server.close()
        for writer in held:
            writer.close()
        await server.wait_closed()


async def test_listener_close_refuses_new_links_and_frees_the_address(make_transport, make_rec, make_accepting) -> None:
    t = make_transport()
    accepting = make_accepting()
    listener = await t.listen("zmq+tcp://127.0.0.1:0", accepting)
    crec = make_rec()
    link = await make_transport().connect(listener.address, crec)
    srec = await accepting.get(0)
    await listener.aclose()
    with pytest.raises(ConnectionRefusedError, match="listener is closed"):
        await make_transport().connect(listener.address, make_rec())
    link.send([b"still up"])
    assert (await srec.wait_frames(1))[0] == [b"still up"]
    link.close()
    assert await srec.wait_lost() is None
    # the socket closed with its last link: the port can be bound again at
    # once (listen waits for libzmq's I/O thread to report it released)
    await crec.wait_lost()
    again = await t.listen(listener.address, make_accepting())
    await again.aclose()
    # without links, aclose() itself frees it
    third = await t.listen(listener.address, make_accepting())
    await third.aclose()


async def test_ipc_listen_protects_paths(make_transport, tmp_path) -> None:
    t = make_transport("zmq+ipc")
    path = tmp_path / "file"
    path.write_text("precious")
    with pytest.raises(OSError, match="not a socket"):
        await t.listen(f"zmq+ipc://{path}", lambda: None)
    assert path.read_text() == "precious"
    live = await t.listen(f"zmq+ipc://{tmp_path}/live.sock", lambda: None)
    with pytest.raises(OSError, match="another listener"):
        await t.listen(live.address, lambda: None)
    await live.aclose()
    assert not (tmp_path / "live.sock").exists()
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file nobody listens on
    again = await t.listen(f"zmq+ipc://{stale}", lambda: None)
    await again.aclose()


async def test_tcp_port_in_use(make_transport) -> None:
    t = make_transport()
    listener = await t.listen("zmq+tcp://127.0.0.1:0", lambda: None)
    with pytest.raises(OSError):
        await t.listen(listener.address, lambda: None)


async def _pair(make_transport, make_rec, make_accepting, *, server: dict | None = None, client: dict | None = None):
    accepting = make_accepting()
    listener = await make_transport(**(server or {})).listen("zmq+tcp://127.0.0.1:0", accepting)
    crec = make_rec()
    link = await make_transport(**(client or {})).connect(listener.address, crec)
    srec = await accepting.get(0)
    return link, crec, srec


async def test_frame_shapes(make_transport, make_rec, make_accepting) -> None:
    """Small frames are batched, large ones go in parts without a copy;
    both keep buffer boundaries, empty buffers and order."""
    link, _, srec = await _pair(make_transport, make_rec, make_accepting)
    big = os.urandom(200_000)
    strided = memoryview(bytes(range(200)))[::2]  # not contiguous
    frames = [
        [b""],
        [b"", b""],
        [b"a", b"", b"c"],
        [bytearray(b"ba"), memoryview(b"mv")],
        [memoryview(array("I", range(8)))],
        [strided.tobytes()],
        [b"h", big],
        [big],
        [b"h", big, b"", big[:10]],
        [b"tail"],
    ]
    link.send_many(frames[:5])
    link.send(frames[5])
    link.send([strided])
    for f in frames[6:]:
        link.send(f)
    got = await srec.wait_frames(len(frames) + 1)
    want = [[bytes(b) for b in f] for f in frames[:6]] + [[strided.tobytes()]]
    want += [[bytes(b) for b in f] for f in frames[6:]]
    assert [[bytes(b) for b in f] for f in got] == want
    # large buffers arrive as memoryviews of libzmq's own message: no copy
    assert type(got[7][1]) is memoryview and got[7][1].nbytes == len(big)
    # and they are the receiver's: unchanged while more arrives
    kept = got[7][1]
    for _ in range(20):
        link.send([os.urandom(300_000)])
    await srec.wait_frames(len(frames) + 21)
    assert bytes(kept) == big


async def test_send_refuses_bad_frames(make_transport, make_rec, make_accepting) -> None:
    link, _, srec = await _pair(make_transport, make_rec, make_accepting)
    with pytest.raises(ValueError):
        link.send([])
    with pytest.raises(TypeError):
        link.send(["text"])  # type: ignore[list-item]
    with pytest.raises(FrameTooLarge) as info:
        link.send([bytes(64 * 1024 * 1024 + 1)])
    assert info.value.limit == 64 * 1024 * 1024 and not link.is_closing()
    link.send([b"ok"])
    assert (await srec.wait_frames(1))[0] == [b"ok"]


async def test_frame_over_the_peers_limit(make_transport, make_rec, make_accepting) -> None:
    """The peer announced a smaller max_frame_bytes: the frame is not sent;
    both ends end with FrameTooLarge, after the frames sent before it."""
    link, crec, srec = await _pair(
        make_transport, make_rec, make_accepting, server={"max_frame_bytes": 1000}, client={"max_frame_bytes": 100_000}
    )
    link.send([b"before"])
    link.send([b"x" * 1001])  # within our limit, over the peer's
    assert link.is_closing()
    with pytest.raises(LinkClosed):
        link.send([b"after"])
    sexc = await srec.wait_lost()
    cexc = await crec.wait_lost()
    assert isinstance(sexc, FrameTooLarge) and (sexc.size, sexc.limit) == (1001, 1000)
    assert isinstance(cexc, FrameTooLarge) and cexc.limit == 1000
    assert srec.frames == [[b"before"]]


async def test_close_waits_for_the_peer_and_delivers_everything(make_transport, make_rec, make_accepting) -> None:
    _, crec, srec = await _pair(make_transport, make_rec, make_accepting)
    for i in range(10_000):
        srec.link.send([b"%d" % i])
    srec.link.close()
    assert srec.link.is_closing()
    assert await crec.wait_lost() is None
    assert await srec.wait_lost() is None
    assert [f[0] for f in crec.frames] == [b"%d" % i for i in range(10_000)]


async def test_handler_that_raises_aborts_only_its_link(make_transport, make_rec, make_accepting) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    def boom(rec, frame):
        if frame == [b"boom"]:
            raise RuntimeError("handler bug")

    accepting = make_accepting(on_frame=boom)
    listener = await make_transport().listen("zmq+tcp://127.0.0.1:0", accepting)
    a, b = make_rec(), make_rec()
    la = await make_transport().connect(listener.address, a)
    lb = await make_transport().connect(listener.address, b)
    sa, sb = await accepting.get(0), await accepting.get(1)
    la.send([b"boom"])
    assert isinstance(await a.wait_lost(), LinkClosed)
    assert await sa.wait_lost() is None
    assert isinstance(errors[0]["exception"], RuntimeError)
    lb.send([b"fine"])
    assert (await sb.wait_frames(1))[0] == [b"fine"]


async def test_transport_aclose_ends_everything(make_transport, make_rec, make_accepting) -> None:
    t = make_transport()
    accepting = make_accepting()
    listener = await t.listen("zmq+tcp://127.0.0.1:0", accepting)
    out = make_rec()
    other = await make_transport().listen("zmq+tcp://127.0.0.1:0", make_accepting())
    await t.connect(other.address, out)
    inc = make_rec()
    await make_transport().connect(listener.address, inc)
    srec = await accepting.get(0)
    await t.aclose()
    assert isinstance(await srec.wait_lost(), LinkClosed)
    assert isinstance(await out.wait_lost(), LinkClosed)
    assert isinstance(await inc.wait_lost(), LinkClosed)


async def test_address_is_free_again_right_after_the_transport_closes(make_transport, make_rec,
                                                                       make_accepting) -> None:
    """A messenger restarted in the same process on the same address (an
    abort with links up, then listen again at once) binds it: libzmq frees
    an address in its I/O thread after close returns, and ``listen`` waits
    for that instead of failing with "address already in use" (it did in
    about half of the runs)."""
    address = "zmq+tcp://127.0.0.1:0"
    for _ in range(10):
        t = make_transport()
        accepting = make_accepting()
        listener = await t.listen(address, accepting)
        address = listener.address
        await make_transport().connect(address, make_rec())
        await accepting.get(0)
        await t.aclose()
    last = await make_transport().listen(address, make_accepting())
    await last.aclose()


async def test_silent_connections_are_dropped(make_transport) -> None:
    """A ZMTP peer that never says hello is dropped after connect_timeout."""
    t = make_transport(connect_timeout=0.3)
    listener = await t.listen("zmq+tcp://127.0.0.1:0", lambda: None)
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    try:
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.RECONNECT_IVL, -1)
        events = dealer.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        dealer.connect(parse_address(listener.address, listen=False)[1])
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, events.poll, 10_000), "never dropped"
        events.close(0)
    finally:
        dealer.close(0)
