"""The loop:// transport as a transport: addresses, delivery, limits, closing."""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata

import msgr_loopback
import pluggy
import pytest
from msgr_loopback import LoopTransport

import msgr_core
from msgr_core import hookspecs
from msgr_core.errors import ConfigError, FrameTooLarge, LinkClosed, UnsupportedAddress


async def test_entry_point_and_hookimpl() -> None:
    eps = importlib.metadata.entry_points(group="msgr.transports")
    assert {ep.name: ep.value for ep in eps}["loop"] == "msgr_loopback"
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(msgr_loopback)
    assert pm.hook.msgr_register_transports() == [[LoopTransport]]
    assert LoopTransport.schemes == ("loop",)
    assert LoopTransport.config_section == "loop"
    assert LoopTransport.config_defaults == {"network": "default", "node": ""}
    assert msgr_core.hookimpl is hookspecs.hookimpl


async def test_listen_connect_addresses(transport, server, recorder, net) -> None:
    srv = server()
    t_a, t_b = transport(), transport()
    listener = await t_a.listen("loop://alpha", srv.factory)
    assert listener.address == "loop://alpha"
    assert t_a.node == "alpha"
    rec = recorder()
    link = await t_b.connect("loop://alpha", rec)
    # link_made has run when connect returns; the accepting side follows
    assert rec.made.done() and rec.events == ["made"]
    assert t_b.node is not None and t_b.node.startswith("node-")
    assert link.local_address == f"loop://{t_b.node}"
    assert link.peer_address == "loop://alpha"
    peer = await srv.link()
    assert peer.link is not None
    assert peer.link.local_address == "loop://alpha"
    assert peer.link.peer_address == f"loop://{t_b.node}"
    assert net.listeners() == ["loop://alpha"]
    assert net.node_of("loop://alpha") == "alpha"
    assert net.stats.links_made == 1
    assert len(net.links()) == 2 and len(net.links("alpha")) == 1


async def test_port_zero_names(transport, server) -> None:
    t = transport()
    first = await t.listen("loop://", server().factory)
    second = await t.listen("loop://", server().factory)
    assert first.address != second.address
    assert t.node == first.address.removeprefix("loop://")
    named = transport(node="n1")
    auto = await named.listen("loop://", server().factory)
    assert auto.address.startswith("loop://n1-")
    rec_server = server()
    other = await transport().listen(first.address + "x", rec_server.factory)
    assert other.address == first.address + "x"


async def test_bad_addresses_and_bound_names(transport, server, recorder) -> None:
    t = transport()
    for bad in ["tcp://a", "loop:/a", "loop://a/b", "loop://a b", "loop://a:1", "a"]:
        with pytest.raises(UnsupportedAddress):
            await t.listen(bad, server().factory)
    with pytest.raises(UnsupportedAddress):
        await t.connect("loop://", recorder())
    await t.listen("loop://x", server().factory)
    with pytest.raises(OSError) as info:
        await transport().listen("loop://x", server().factory)
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(ConnectionRefusedError):
        await t.connect("loop://nobody", recorder())
    with pytest.raises(ConfigError, match=r"loop\.node"):
        transport(node="bad name")


async def test_ordered_multibuffer_both_ways_zero_copy(transport, server, recorder) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    cli = recorder()
    link = await transport().connect("loop://s", cli)
    sent = []
    for i in range(200):
        frame = [
            f"head{i}".encode(),
            bytearray(i % 7),
            memoryview(bytes([i % 256]) * (i * 3)),
        ]
        sent.append(frame)
        link.send(frame)
    assert link.write_buffer_size() > 0
    peer = await srv.link()
    got = await peer.wait_frames(200)
    assert len(got) == 200
    for frame, received in zip(sent, got, strict=True):
        assert len(received) == len(frame)
        # zero-copy: the very objects the sender passed
        assert all(r is s for r, s in zip(received, frame, strict=True))
    assert link.write_buffer_size() == 0
    # and back, with send_many
    assert peer.link is not None
    back = [[b"r", bytes([i])] for i in range(50)]
    peer.link.send_many(back)
    await cli.wait_frames(50)
    assert [f[1] for f in cli.frames] == [bytes([i]) for i in range(50)]
    assert cli.frames[0][0] is back[0][0]


async def test_delivery_is_never_synchronous(transport, server, recorder) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    cli = recorder()
    link = await transport().connect("loop://s", cli)
    peer = await srv.link()
    # a handler that answers from inside frame_received must not recurse
    assert peer.link is not None
    echo = peer.link

    def answer(frame):
        depth.append(len(cli.frames))
        echo.send(frame)

    depth: list[int] = []
    peer.on_frame = answer
    link.send([b"ping"])
    assert peer.frames == []
    await cli.wait_frames(1)
    assert peer.frames == [[b"ping"]] and depth == [0]


async def test_frame_limits(transport, server, recorder) -> None:
    srv = server()
    await transport(max_frame_bytes=100).listen("loop://small", srv.factory)
    cli = recorder()
    link = await transport(max_frame_bytes=1000).connect("loop://small", cli)
    with pytest.raises(FrameTooLarge) as info:
        link.send([b"x" * 600, b"y" * 401])
    assert (info.value.size, info.value.limit) == (1001, 1000)
    with pytest.raises(ValueError):
        link.send([])
    link.send([b"x" * 60, b"y" * 40])  # exactly the receiver's limit
    peer = await srv.link()
    await peer.wait_frames(1)
    assert not link.is_closing()
    # over the receiver's own limit: that link alone closes, typed
    link.send([b"z" * 101])
    exc = await peer.wait_lost()
    assert isinstance(exc, FrameTooLarge) and exc.limit == 100
    assert isinstance(await cli.wait_lost(), LinkClosed)


async def test_close_flushes_then_ends_both(transport, server, recorder) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    cli = recorder()
    link = await transport().connect("loop://s", cli)
    for i in range(10):
        link.send([bytes([i])])
    link.close()
    link.close()  # idempotent
    assert link.is_closing()
    with pytest.raises(LinkClosed):
        link.send([b"late"])
    peer = await srv.link()
    assert await peer.wait_lost() is None
    assert await cli.wait_lost() is None
    assert [f[0] for f in peer.frames] == [bytes([i]) for i in range(10)]
    assert peer.events[-1] == "lost" and cli.events == ["made", "lost"]
    assert peer.link is not None and peer.link.is_closing()


async def test_abort_discards_and_resets_peer(transport, server, recorder, net) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    cli = recorder()
    link = await transport().connect("loop://s", cli)
    peer = await srv.link()
    link.send([b"lost"])
    link.abort()
    link.abort()
    assert link.write_buffer_size() == 0
    assert await cli.wait_lost() is None
    exc = await peer.wait_lost()
    assert isinstance(exc, LinkClosed) and "reset by peer" in str(exc)
    assert peer.frames == []
    assert net.links() == []
    assert net.stats.links_closed == 1


async def test_listener_close_keeps_links(transport, server, recorder) -> None:
    srv = server()
    t = transport()
    listener = await t.listen("loop://s", srv.factory)
    cli = recorder()
    link = await transport().connect("loop://s", cli)
    await listener.aclose()
    await listener.aclose()
    with pytest.raises(ConnectionRefusedError):
        await transport().connect("loop://s", recorder())
    link.send([b"still up"])
    peer = await srv.link()
    assert (await peer.wait_frames(1))[0] == [b"still up"]
    # the name is free again
    again = await transport().listen("loop://s", server().factory)
    assert again.address == "loop://s"
    await t.aclose()


async def test_failing_handler_breaks_its_link_only(transport, server, recorder) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    a, b = recorder(), recorder()
    link_a = await transport().connect("loop://s", a)
    link_b = await transport().connect("loop://s", b)
    peer_a, peer_b = await srv.link(0), await srv.link(1)

    def boom(frame):
        raise RuntimeError("handler bug")

    peer_a.on_frame = boom
    reported: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
    link_a.send([b"1"])
    link_b.send([b"2"])
    assert isinstance(await peer_a.wait_lost(), RuntimeError)
    assert isinstance(await a.wait_lost(), LinkClosed)
    assert (await peer_b.wait_frames(1))[0] == [b"2"]
    assert not link_b.is_closing()
    assert isinstance(reported[0]["exception"], RuntimeError)


async def test_explicit_network_object(transport, server, recorder) -> None:
    mine = msgr_loopback.SimNetwork(name="private")
    srv = server()
    await transport(network=mine).listen("loop://p", srv.factory)
    with pytest.raises(ConnectionRefusedError):
        await transport().connect("loop://p", recorder())  # other network
    await transport(network=mine).connect("loop://p", recorder())
    assert len(mine.links()) == 2
    assert "private" in repr(mine)
    other = msgr_loopback.get_network("other")
    assert other is msgr_loopback.get_network("other")
    assert other is not msgr_loopback.get_network()
