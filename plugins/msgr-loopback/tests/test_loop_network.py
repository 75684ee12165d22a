"""The simulated network: delay and jitter under virtual time, drops,
partitions, kills, stalls and back-pressure, determinism, scale."""

from __future__ import annotations

import asyncio
import errno

import pytest
from msgr_loopback import SimNetwork

from msgr_core.errors import LinkClosed


async def _pair(transport, server, recorder, name="s", client_node="c", **options):
    """A listener ``name`` and a client node linked to it."""
    srv = server()
    await transport(**options).listen(f"loop://{name}", srv.factory)
    cli = recorder()
    link = await transport(node=client_node, **options).connect(f"loop://{name}", cli)
    peer = await srv.link()
    return link, cli, peer


@pytest.mark.looptime
async def test_delay_under_virtual_time(transport, server, recorder, net) -> None:
    loop = asyncio.get_running_loop()
    net.set_delay("c", "s", 5.0, one_way=True)
    assert net.path("c", "s").delay == 5.0 and net.path("s", "c").delay == 0.0
    start = loop.time()
    link, cli, peer = await _pair(transport, server, recorder)
    assert loop.time() - start == pytest.approx(5.0)  # one round trip
    sent_at = loop.time()
    link.send([b"slow"])
    assert peer.link is not None
    peer.link.send([b"fast"])
    await cli.wait_frames(1)
    assert cli.times[0] == pytest.approx(sent_at)
    await peer.wait_frames(1, guard=10)
    assert peer.times[0] == pytest.approx(sent_at + 5.0)
    # a rule change applies to frames sent afterwards, order is kept
    net.set_delay(None, None, 0.0)
    net.set_delay("c", "s", 1.0)
    link.send([b"after"])
    await peer.wait_frames(2)
    assert peer.times[1] == pytest.approx(sent_at + 6.0)


@pytest.mark.looptime
async def test_connect_timeout_under_delay(transport, server, recorder, net) -> None:
    loop = asyncio.get_running_loop()
    await transport().listen("loop://far", server().factory)
    net.set_delay("near", "far", 20.0)
    start = loop.time()
    with pytest.raises(TimeoutError):
        await transport(node="near", connect_timeout=10.0).connect("loop://far", recorder())
    assert loop.time() - start == pytest.approx(10.0)
    assert net.stats.connects_refused == 1


@pytest.mark.looptime
async def test_jitter_never_reorders(transport, server, recorder, net) -> None:
    loop = asyncio.get_running_loop()
    net.set_delay(None, None, 0.010, jitter=1.0)
    link, _cli, peer = await _pair(transport, server, recorder)
    sent_at = []
    for i in range(300):
        sent_at.append(loop.time())
        link.send([i.to_bytes(2, "big")])
        if i % 10 == 0:
            await asyncio.sleep(0.3)
    await peer.wait_frames(300, guard=60)
    assert [int.from_bytes(f[0], "big") for f in peer.frames] == list(range(300))
    assert peer.times == sorted(peer.times)
    lags = [got - sent for got, sent in zip(peer.times, sent_at, strict=True)]
    assert min(lags) >= 0.010 - 1e-9
    assert max(lags) > 0.5  # the jitter did apply
    assert len(set(peer.times)) > 30


async def test_drop_breaks_the_link_not_a_frame(transport, server, recorder, net) -> None:
    link, cli, peer = await _pair(transport, server, recorder)
    link.send([b"1"])
    link.send([b"2"])
    net.set_drop("c", "s", 1.0)
    link.send([b"3"])  # dropped: the link breaks when it would have arrived
    link.send([b"4"])
    exc = await peer.wait_lost()
    assert isinstance(exc, LinkClosed) and "dropped by simulated network" in str(exc)
    cexc = await cli.wait_lost()
    assert isinstance(cexc, LinkClosed) and "dropped" in str(cexc)
    assert [f[0] for f in peer.frames] == [b"1", b"2"]
    assert net.stats.frames_dropped == 1 and net.stats.links_broken == 1
    assert net.pair_stats("c", "s").dropped == 1
    assert net.pair_stats("c", "s").frames == 2
    with pytest.raises(LinkClosed) as info:
        link.send([b"5"])
    assert info.value.__cause__ is cexc
    # drops only affect sends; connecting still works
    assert net.path("s", "c").drop == 1.0
    net.set_drop(None, None, 0.0)
    net.set_drop("c", "s", 0.0)
    await transport(node="c2").connect("loop://s", recorder())


async def test_partition_and_heal(transport, server, recorder, net) -> None:
    servers = {n: server() for n in "abc"}
    ts = {n: transport() for n in "abc"}
    for n in "abc":
        await ts[n].listen(f"loop://{n}", servers[n].factory)
    ab, bc, ac = recorder(), recorder(), recorder()
    await ts["a"].connect("loop://b", ab)
    await ts["b"].connect("loop://c", bc)
    await ts["a"].connect("loop://c", ac)
    b_from_a = await servers["b"].link()

    assert net.partition(["a"], ["loop://b"]) == 1
    assert net.path("b", "a").partitioned and not net.path("a", "c").partitioned
    assert isinstance(await ab.wait_lost(), LinkClosed)
    assert isinstance(await b_from_a.wait_lost(), LinkClosed)
    for src, dst in [("a", "b"), ("b", "a")]:
        with pytest.raises(OSError) as info:
            await ts[src].connect(f"loop://{dst}", recorder())
        assert info.value.errno == errno.EHOSTUNREACH
    assert not bc.lost.done() and not ac.lost.done()

    # a group against everyone else
    assert net.partition(["c"]) == 2
    assert isinstance(await bc.wait_lost(), LinkClosed)
    assert isinstance(await ac.wait_lost(), LinkClosed)
    net.heal()
    again = recorder()
    link = await ts["a"].connect("loop://b", again)
    link.send([b"healed"])
    assert (await servers["b"].link(1)).link is not None
    assert (await servers["b"].accepted[1].wait_frames(1))[0] == [b"healed"]
    await ts["b"].connect("loop://c", recorder())


async def test_kill_link(transport, server, recorder, net) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    t_a = transport(node="a")
    one, two = recorder(), recorder()
    await t_a.connect("loop://s", one)
    await t_a.connect("loop://s", two)
    other = recorder()
    await transport(node="b").connect("loop://s", other)
    assert net.kill_link("a", "s") == 2
    for rec in (one, two):
        exc = await rec.wait_lost()
        assert isinstance(exc, LinkClosed) and "killed" in str(exc)
    assert not other.lost.done()
    await t_a.connect("loop://s", recorder())  # new links are fine


async def test_kill_node_and_revive(transport, server, recorder, net) -> None:
    srv_b = server()
    t_b = transport()
    listener = await t_b.listen("loop://b", srv_b.factory)
    t_a = transport()
    await t_a.listen("loop://a", server().factory)
    to_b = recorder()
    await t_a.connect("loop://b", to_b)
    from_b = recorder()
    await t_b.connect("loop://a", from_b)
    b_side = await srv_b.link()
    assert net.kill_node("b") == 2
    assert net.is_down("b")
    assert isinstance(await to_b.wait_lost(), LinkClosed)
    assert isinstance(await from_b.wait_lost(), LinkClosed)
    assert isinstance(await b_side.wait_lost(), LinkClosed)
    assert net.listeners() == ["loop://a"]
    await listener.aclose()  # already gone: a no-op
    with pytest.raises(ConnectionRefusedError):
        await t_a.connect("loop://b", recorder())
    with pytest.raises(OSError) as info:
        await t_b.connect("loop://a", recorder())
    assert info.value.errno == errno.ENETDOWN
    with pytest.raises(OSError) as info:
        await t_b.listen("loop://b", server().factory)
    assert info.value.errno == errno.ENETDOWN
    net.revive_node("b")
    srv_again = server()
    await t_b.listen("loop://b", srv_again.factory)
    link = await t_a.connect("loop://b", recorder())
    link.send([b"back"])
    assert (await (await srv_again.link()).wait_frames(1))[0] == [b"back"]


async def test_stall_builds_backpressure(transport, server, recorder, net) -> None:
    link, cli, peer = await _pair(transport, server, recorder, high_watermark=1000, low_watermark=200)
    net.stall("s")
    assert net.is_stalled("s")
    payloads = [bytes([i]) * 100 for i in range(20)]
    for p in payloads:
        link.send([p])
    assert cli.events == ["made"]  # never from inside send
    await asyncio.wait_for(cli.paused.wait(), 5)
    assert link.write_buffer_size() == 2000
    await asyncio.sleep(0)
    assert peer.frames == []
    net.unstall("s")
    net.unstall("s")
    await asyncio.wait_for(cli.resumed.wait(), 5)
    assert link.write_buffer_size() == 0
    assert [f[0] for f in peer.frames] == payloads
    assert cli.events == ["made", "pause", "resume"]
    # close waits for a stalled receiver; abort does not
    net.stall("s")
    link.send([b"last"])
    link.close()
    await asyncio.sleep(0.01)
    assert not cli.lost.done()
    net.unstall("s")
    assert await cli.wait_lost() is None
    assert await peer.wait_lost() is None
    assert peer.frames[-1] == [b"last"]


@pytest.mark.looptime
async def test_delay_backpressure_pause_and_resume(transport, server, recorder, net) -> None:
    loop = asyncio.get_running_loop()
    net.set_delay(None, None, 1.0)
    link, cli, peer = await _pair(transport, server, recorder, high_watermark=500, low_watermark=100)
    start = loop.time()
    for _ in range(10):
        link.send([b"x" * 100])
    await asyncio.wait_for(cli.paused.wait(), 5)
    assert loop.time() == pytest.approx(start)
    await asyncio.wait_for(cli.resumed.wait(), 5)
    assert loop.time() == pytest.approx(start + 1.0)
    assert len(peer.frames) == 10


async def _scenario(transport, server, recorder, seed: int) -> tuple[list[float], int]:
    """Send until a 3% drop rate breaks the link; arrival lags and count."""
    loop = asyncio.get_running_loop()
    net = SimNetwork(seed=seed)
    net.set_delay(None, None, 0.001, jitter=0.5)
    net.set_drop("c", "s", 0.03)
    link, _cli, peer = await _pair(transport, server, recorder, network=net)
    start = loop.time()
    for i in range(400):
        link.send([i.to_bytes(2, "big")])
    await peer.wait_lost(guard=60)
    return [round(t - start, 9) for t in peer.times], net.stats.frames_dropped


@pytest.mark.looptime
async def test_seeded_runs_are_identical(transport, server, recorder) -> None:
    first = await _scenario(transport, server, recorder, seed=7)
    second = await _scenario(transport, server, recorder, seed=7)
    other = await _scenario(transport, server, recorder, seed=8)
    assert first == second
    assert first != other
    assert first[1] == 1 and 0 < len(first[0]) < 400


@pytest.mark.looptime
async def test_stats(transport, server, recorder, net) -> None:
    link, cli, peer = await _pair(transport, server, recorder)
    link.send([b"abc", b"de"])
    link.send([b"f"])
    assert peer.link is not None
    peer.link.send([b"xyz"])
    await peer.wait_frames(2)
    await cli.wait_frames(1)
    assert net.stats.frames_sent == 3 and net.stats.frames_delivered == 3
    assert net.stats.bytes_delivered == 9
    assert (net.pair_stats("c", "s").frames, net.pair_stats("c", "s").bytes) == (2, 6)
    assert net.stats.pairs[("s", "c")].bytes == 3
    net.set_delay(None, None, 1.0, jitter=0.5)
    net.set_drop("c", None, 0.5)
    assert net.path("c", "s") == (1.0, 0.5, 0.5, False)
    net.clear_rules()
    assert net.path("c", "s") == (0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError):
        net.set_drop("c", "s", 1.5)
    with pytest.raises(ValueError):
        net.set_delay("c", "s", -1.0)


@pytest.mark.looptime(noop_cycles=1)  # looptime's idle cycles dominate otherwise
async def test_thousand_node_ring(transport, server, recorder, net) -> None:
    """1000 nodes in a ring pass a token around twice (1 ms per hop)."""
    loop = asyncio.get_running_loop()
    n = 1000
    net.set_delay(None, None, 0.001)
    nodes = [transport() for _ in range(n)]
    servers = [server() for _ in range(n)]
    for i in range(n):
        await nodes[i].listen(f"loop://n{i}", servers[i].factory)
    links = []
    for i in range(n):
        links.append(await nodes[i].connect(f"loop://n{(i + 1) % n}", recorder()))
    hops: list[int] = []
    done = loop.create_future()

    def forwarder(i: int):
        def on_frame(frame):
            hop = int.from_bytes(frame[0], "big")
            hops.append(i)
            if hop + 1 == 2 * n:
                done.set_result(loop.time())
            else:
                links[i].send([(hop + 1).to_bytes(4, "big")])

        return on_frame

    for i in range(n):
        rec = await servers[i].link()
        rec.on_frame = forwarder(i)
    start = loop.time()
    links[0].send([(0).to_bytes(4, "big")])
    finished = await asyncio.wait_for(done, 60)
    assert finished - start == pytest.approx(2 * n * 0.001)
    assert hops == [(k + 1) % n for k in range(2 * n)]
    assert len(net.links()) == 2 * n
    assert net.stats.frames_delivered == 2 * n


async def test_pause_reading_one_link(transport, server, recorder, net) -> None:
    srv = server()
    await transport().listen("loop://s", srv.factory)
    slow, fast = recorder(), recorder()
    t_c = transport(node="c", high_watermark=300, low_watermark=100)
    slow_link = await t_c.connect("loop://s", slow)
    fast_link = await t_c.connect("loop://s", fast)
    slow_peer, fast_peer = await srv.link(0), await srv.link(1)
    slow_peer.link.pause_reading()
    for i in range(5):
        slow_link.send([bytes([i]) * 100])
        fast_link.send([bytes([i]) * 100])
    await asyncio.wait_for(slow.paused.wait(), 5)
    await fast_peer.wait_frames(5)
    assert slow_peer.frames == [] and not fast.paused.is_set()
    assert slow_link.write_buffer_size() == 500 and fast_link.write_buffer_size() == 0
    slow_peer.link.resume_reading()
    await slow_peer.wait_frames(5)
    await asyncio.wait_for(slow.resumed.wait(), 5)
    assert [f[0][0] for f in slow_peer.frames] == list(range(5))


async def test_link_broken_before_accept(transport, server, recorder, net) -> None:
    """A link that breaks before the listener saw it never reaches its handler."""
    srv = server()
    await transport().listen("loop://s", srv.factory)
    cli = recorder()
    await transport(node="c").connect("loop://s", cli)
    net.kill_link("c", "s")
    assert isinstance(await cli.wait_lost(), LinkClosed)
    await asyncio.sleep(0)
    assert srv.accepted == []
