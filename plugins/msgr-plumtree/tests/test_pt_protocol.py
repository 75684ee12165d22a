"""The protocol rules of one Plumtree server, against a recording fake
messenger, under virtual time: lazy push and its acknowledgement, prune,
graft at once (Partisan) or by the paper's two timers, graft answers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from msgr_plumtree import STALE, MessageLog, Plumtree

from msgr_core.message import Message


class FakeConn:
    def __init__(self, ms: FakeMessenger, peer: str) -> None:
        self.ms = ms
        self.peer_name = peer

    def send_nowait(self, verb: str, payload: Any) -> None:
        self.ms.sent.append((self.peer_name, verb, payload))


class FakeMessenger:
    """What Plumtree uses of a Messenger; records what it sends."""

    def __init__(self, name: str = "me") -> None:
        self.name = name
        self.view: frozenset[str] | None = None
        self.loop = asyncio.get_running_loop()
        self.sent: list[tuple[str, str, Any]] = []
        self.oneway: dict[str, Any] = {}
        self.requests: dict[str, Any] = {}

    def register_handler_oneway(self, verb: str, fn: Any) -> None:
        self.oneway[verb] = fn

    def register_handler(self, verb: str, fn: Any) -> None:
        self.requests[verb] = fn

    def get_connection(self, peer: str) -> FakeConn:
        return FakeConn(self, peer)

    def deliver(self, verb: str, sender: str, payload: Any) -> None:
        self.oneway[verb](Message(verb, payload, [], FakeConn(self, sender)))  # type: ignore[arg-type]

    def take(self, verb: str | None = None) -> list[tuple[str, str, Any]]:
        out = [s for s in self.sent if verb is None or s[1] == verb]
        self.sent = [s for s in self.sent if s not in out]
        return out


async def server(**options: Any) -> tuple[FakeMessenger, Plumtree, MessageLog]:
    ms = FakeMessenger()
    pt = Plumtree(ms, **options)  # type: ignore[arg-type]
    pt.start()
    pt.update(["me", "a", "b", "c", "d"])
    # a known shape: a, b eager; c, d lazy
    pt.common_eagers, pt.common_lazys = {"a", "b"}, {"c", "d"}
    log = MessageLog(pt)
    return ms, pt, log


pytestmark = pytest.mark.looptime


async def test_pt_new_message_eager_to_eager_lazy_until_acknowledged() -> None:
    ms, pt, log = await server(lazy_tick_period=1.0)
    ms.deliver("pt.broadcast", "a", ["log", "m1", b"p", 2, "root"])
    assert log.messages == {"m1": b"p"}
    assert ms.take("pt.broadcast") == [("b", "pt.broadcast", ["log", "m1", b"p", 3, "root"])]  # not back to a
    assert pt.get_peers("root") == ({"a", "b"}, {"c", "d"})
    assert ms.take() == []  # i_have waits for the tick
    for _ in range(3):  # resent every tick until acknowledged
        await asyncio.sleep(1.0)
        assert sorted(ms.take("pt.i_have")) == [("c", "pt.i_have", [["log", "m1", 3, "root"]]),
                                                ("d", "pt.i_have", [["log", "m1", 3, "root"]])]
    ms.deliver("pt.ignored", "c", ["log", "m1", 3, "root"])
    await asyncio.sleep(1.0)
    assert ms.take("pt.i_have") == [("d", "pt.i_have", [["log", "m1", 3, "root"]])]
    ms.deliver("pt.ignored", "d", ["log", "m1", 3, "root"])
    await asyncio.sleep(1.0)
    assert ms.take() == [] and pt.outstanding == {}


async def test_pt_duplicate_prunes_the_sender_and_prune_makes_a_link_lazy() -> None:
    ms, pt, _log = await server()
    ms.deliver("pt.broadcast", "a", ["log", "m1", b"p", 1, "root"])
    ms.take()
    ms.deliver("pt.broadcast", "b", ["log", "m1", b"p", 1, "root"])
    assert ms.take() == [("b", "pt.prune", "root")]
    assert pt.get_peers("root") == ({"a"}, {"b", "c", "d"})
    assert pt.counters["duplicates"] == 1
    ms.deliver("pt.prune", "a", "root")
    assert pt.get_peers("root") == (set(), {"a", "b", "c", "d"})
    assert pt.get_peers("other") == ({"a", "b"}, {"c", "d"})  # other trees untouched


async def test_pt_partisan_grafts_at_once() -> None:
    ms, pt, log = await server(graft_mode="partisan")
    ms.deliver("pt.i_have", "c", [["log", "m1", 4, "root"], ["log", "old", 2, "root"]])
    log.messages["old"] = b"o"
    assert ms.take() == [("c", "pt.graft", ["log", "m1", 4, "root"]), ("c", "pt.graft", ["log", "old", 2, "root"])]
    ms.deliver("pt.i_have", "d", [["log", "old", 2, "root"]])
    assert ms.take() == [("d", "pt.ignored", ["log", "old", 2, "root"])]
    assert "c" in pt.get_peers("root")[0]  # grafting makes the link eager


async def test_pt_paper_mode_graft_timers() -> None:
    ms, pt, _log = await server(graft_mode="paper", graft_timeout=0.5, graft_retry_timeout=0.25,
                               lazy_tick_period=100.0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ms.deliver("pt.i_have", "c", [["log", "m1", 4, "root"]])
    await asyncio.sleep(0.3)
    ms.deliver("pt.i_have", "d", [["log", "m1", 5, "root"]])
    assert ms.take() == []
    await asyncio.sleep(0.2)  # the first timer: graft from the first announcer
    assert ms.take() == [("c", "pt.graft", ["log", "m1", 4, "root"])] and loop.time() - t0 == pytest.approx(0.5)
    await asyncio.sleep(0.25)  # no answer within the second timer: the next announcer
    assert ms.take() == [("d", "pt.graft", ["log", "m1", 5, "root"])]
    await asyncio.sleep(5)
    assert ms.take() == []  # no announcer left

    # the message arriving in time cancels the timer
    ms.deliver("pt.i_have", "c", [["log", "m2", 4, "root"]])
    await asyncio.sleep(0.4)
    ms.deliver("pt.broadcast", "a", ["log", "m2", b"x", 3, "root"])
    ms.take()
    await asyncio.sleep(5)
    assert ms.take("pt.graft") == [] and pt.counters["graft_out"] == 2


async def test_pt_graft_answers_payload_stale_or_nothing() -> None:
    ms, pt, log = await server()
    log.messages["m1"] = b"p"
    ms.deliver("pt.graft", "c", ["log", "m1", 3, "root"])
    assert ms.take() == [("c", "pt.broadcast", ["log", "m1", b"p", 3, "root"])]
    assert "c" in pt.get_peers("root")[0]
    ms.deliver("pt.graft", "d", ["log", "unknown", 3, "root"])  # the handler raises: logged, nothing sent
    assert ms.take() == []

    class Superseded(MessageLog):
        def graft(self, msg_id: Any) -> Any:
            return STALE

    Superseded(pt, "kv")
    pt.outstanding["d"] = {("kv", "k1", "root"): ["kv", "k1", 3, "root"]}
    ms.deliver("pt.graft", "d", ["kv", "k1", 3, "root"])
    assert ms.take() == [] and pt.outstanding == {}  # STALE acknowledges the i_have


async def test_pt_membership_changes_update_the_sets() -> None:
    ms, pt, _log = await server()
    ms.deliver("pt.broadcast", "a", ["log", "m1", b"p", 1, "root"])
    pt.update(["me", "a", "c", "d", "e"])  # b left, e joined
    eager, lazy = pt.get_peers("root")
    assert "b" not in eager | lazy and "b" not in pt.outstanding
    assert pt.members == {"a", "c", "d", "e"}
    pt.neighbor_down("c")
    assert "c" not in pt.members and "c" not in pt.outstanding and "c" not in pt.get_peers("root")[1]
    pt.neighbor_up("c")
    assert "c" in pt.members and "c" in pt.get_peers()[0]
    ms.view = frozenset(["me", "a"])
    pt.neighbor_up("z")  # not in the view: ignored
    assert "z" not in pt.members
    pt.close()
