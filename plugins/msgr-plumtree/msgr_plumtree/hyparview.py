"""HyParView peer sampling (Leitão, Pereira, Rodrigues, DSN 2007) for Plumtree.

A small symmetric *active view* (default 5) of neighbours Plumtree uses as
its eager/lazy peers, and a larger *passive view* (30) of backups kept fresh
by periodic shuffles.  A failed active neighbour (``msgr_peer_failed``) is
replaced from the passive view, so each node keeps O(log N) sessions.

Oneway verbs: ``hv.join [name, addrs]``, ``hv.forward_join [name, addrs,
ttl]``, ``hv.neighbor [addrs, high]`` / ``hv.neighbor_reply accepted``,
``hv.add addrs`` (the symmetric half of an active link), ``hv.disconnect``,
``hv.shuffle [origin, addrs, ttl, entries]``, ``hv.shuffle_reply entries``;
an entry is ``[name, [addrs...]]``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from typing import Any

from msgr_core import Messenger
from msgr_core.errors import FrameTooLarge, MessengerError
from msgr_core.message import Message

from .plumtree import Plumtree

__all__ = ["HyParView"]

log = logging.getLogger("msgr.plumtree.hyparview")


class HyParView:
    """One messenger's HyParView membership, feeding :class:`Plumtree`
    (``plumtree.add_neighbor`` / ``remove_neighbor``)."""

    def __init__(self, messenger: Messenger, plumtree: Plumtree, *, contacts: list[str],
                 active_size: int = 5, passive_size: int = 30, arwl: int = 6, prwl: int = 3,
                 shuffle_period: float = 10.0, shuffle_active: int = 3, shuffle_passive: int = 4,
                 shuffle_ttl: int = 6, neighbor_timeout: float = 2.0, seed: int = 0,
                 close_idle_sessions: bool = True) -> None:
        self.ms = messenger
        self.pt = plumtree
        self.name = messenger.name
        self.contacts = [c for c in contacts if c != self.name]
        self.active_size, self.passive_size = active_size, passive_size
        self.arwl, self.prwl = arwl, prwl
        self.shuffle_period = shuffle_period
        self.shuffle_active, self.shuffle_passive, self.shuffle_ttl = shuffle_active, shuffle_passive, shuffle_ttl
        self.neighbor_timeout = neighbor_timeout
        self.close_idle_sessions = close_idle_sessions
        self._idle: dict[str, tuple[int, int]] = {}  # non-neighbour sessions: message counts at the last tick
        self._closing: set[asyncio.Task[None]] = set()
        self.rng = random.Random(seed * 7907 + zlib.crc32(self.name.encode()))
        self.active: set[str] = set()
        self.passive: set[str] = set()
        self.addrs: dict[str, list[str]] = {}
        self._pending: dict[str, asyncio.TimerHandle] = {}  # neighbor requests awaiting a reply
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.counters = {"joins": 0, "shuffles": 0, "promotions": 0, "disconnects": 0, "sessions_closed": 0}

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        ms = self.ms
        for verb, fn in (("hv.join", self._on_join), ("hv.forward_join", self._on_forward_join),
                         ("hv.neighbor", self._on_neighbor), ("hv.neighbor_reply", self._on_neighbor_reply),
                         ("hv.add", self._on_add), ("hv.disconnect", self._on_disconnect),
                         ("hv.shuffle", self._on_shuffle), ("hv.shuffle_reply", self._on_shuffle_reply)):
            ms.register_handler_oneway(verb, fn)
        self._timer = ms.loop.call_later(self.shuffle_period * (0.5 + self.rng.random()), self._shuffle_tick)
        self.join()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for t in self._pending.values():
            t.cancel()
        self._pending.clear()

    def join(self) -> None:
        """Send ``hv.join`` to the first contact (addresses: ``[plumtree]
        contacts`` entries are addresses or known names)."""
        for contact in self.contacts:
            if self._send("hv.join", contact, [self.name, self.ms.addresses]):
                return

    # -- helpers ----------------------------------------------------------------------

    def _send(self, verb: str, peer: str, payload: Any) -> bool:
        try:
            self.ms.get_connection(peer).send_nowait(verb, payload)
            return True
        except (MessengerError, FrameTooLarge) as exc:
            log.debug("%s: %s to %s not sent: %s", self.name, verb, peer, exc)
            return False

    def _learn(self, name: str, addrs: list[str]) -> None:
        if name != self.name and addrs:
            self.addrs[name] = list(addrs)
            self.ms.add_known_address(name, addrs)

    def _entry(self, name: str) -> list[Any]:
        return [name, self.addrs.get(name, [])]

    def _add_active(self, peer: str, *, tell: bool) -> None:
        """Make ``peer`` an active neighbour (dropping a random one if full);
        ``tell``: send ``hv.add`` so the link is symmetric."""
        if peer == self.name or peer in self.active:
            return
        if len(self.active) >= self.active_size:
            dropped = self.rng.choice(sorted(self.active))
            self._send("hv.disconnect", dropped, b"")
            self.counters["disconnects"] += 1
            self._remove_active(dropped)
            self._add_passive(dropped)
        self.passive.discard(peer)
        self.active.add(peer)
        self.pt.add_neighbor(peer)
        if tell:
            self._send("hv.add", peer, self.ms.addresses)

    def _remove_active(self, peer: str) -> None:
        if peer in self.active:
            self.active.discard(peer)
            self.pt.remove_neighbor(peer)

    def _add_passive(self, peer: str) -> None:
        if peer == self.name or peer in self.active or peer in self.passive:
            return
        if len(self.passive) >= self.passive_size:
            self.passive.discard(self.rng.choice(sorted(self.passive)))
        self.passive.add(peer)

    # -- join -------------------------------------------------------------------------

    def _on_join(self, msg: Message) -> None:
        new, addrs = msg.payload
        self._learn(new, addrs)
        self.counters["joins"] += 1
        self._add_active(new, tell=True)
        for peer in sorted(self.active - {new}):
            self._send("hv.forward_join", peer, [new, addrs, self.arwl])

    def _on_forward_join(self, msg: Message) -> None:
        new, addrs, ttl = msg.payload
        if new == self.name:
            return
        self._learn(new, addrs)
        if ttl == 0 or len(self.active) <= 1:
            self._add_active(new, tell=True)
            return
        if ttl == self.prwl:
            self._add_passive(new)
        nxt = sorted(self.active - {msg.peer, new})
        if nxt:
            self._send("hv.forward_join", self.rng.choice(nxt), [new, addrs, ttl - 1])
        else:
            self._add_active(new, tell=True)

    def _on_add(self, msg: Message) -> None:
        self._learn(msg.peer, msg.payload)
        self._add_active(msg.peer, tell=False)

    def _on_disconnect(self, msg: Message) -> None:
        if msg.peer in self.active:
            self._remove_active(msg.peer)
            self._add_passive(msg.peer)
            self._fill()

    # -- failures and promotion ---------------------------------------------------------

    def peer_failed(self, peer: str) -> None:
        """A failure detector failed ``peer``: out of both views, and its
        sessions marked down (a lossless session would otherwise keep
        reconnecting to a dead node and queueing for it, for good); an
        active slot it leaves is refilled from the passive view.  A peer
        failed wrongly comes back through a join or a shuffle, on a new
        session."""
        for conn in self.ms.connections:
            if conn.peer_name == peer:
                conn.mark_down()
        self.passive.discard(peer)
        if peer in self.active:
            self._remove_active(peer)
            self._fill()

    def _fill(self) -> None:
        """Ask a random passive node to become a neighbour (one request at a
        time per candidate; a request unanswered in ``neighbor_timeout``
        drops the candidate and tries another)."""
        if self._closed:
            return
        want = self.active_size - len(self.active) - len(self._pending)
        cands = sorted(self.passive - set(self._pending))
        self.rng.shuffle(cands)
        for peer in cands[:max(0, want)]:
            high = not self.active
            if self._send("hv.neighbor", peer, [self.ms.addresses, high]):
                self._pending[peer] = self.ms.loop.call_later(self.neighbor_timeout, self._neighbor_timeout, peer)
            else:
                self.passive.discard(peer)

    def _neighbor_timeout(self, peer: str) -> None:
        self._pending.pop(peer, None)
        self.passive.discard(peer)
        self._fill()

    def _on_neighbor(self, msg: Message) -> None:
        addrs, high = msg.payload
        self._learn(msg.peer, addrs)
        # a requester already in our active view lost its half of the link
        # (our hv.add crossed its hv.disconnect): take it back, do not refuse
        accept = high or msg.peer in self.active or len(self.active) < self.active_size
        if accept:
            self._add_active(msg.peer, tell=False)
        self._send("hv.neighbor_reply", msg.peer, accept)

    def _on_neighbor_reply(self, msg: Message) -> None:
        t = self._pending.pop(msg.peer, None)
        if t is not None:
            t.cancel()
        if msg.payload:
            self.counters["promotions"] += 1
            self._add_active(msg.peer, tell=False)
        # a refusal is not retried at once (that would ping-pong with full
        # nodes): the next shuffle tick fills the free slots again

    # -- shuffle --------------------------------------------------------------------------

    def _shuffle_tick(self) -> None:
        if self._closed:
            return
        self._timer = self.ms.loop.call_later(self.shuffle_period, self._shuffle_tick)
        if self.close_idle_sessions:
            self._close_idle()
        if len(self.active) < self.active_size:
            self._fill()
        if not self.active:
            self.join()
            return
        act = sorted(self.active)
        pas = sorted(self.passive)
        entries = [self._entry(n) for n in self.rng.sample(act, min(self.shuffle_active, len(act)))]
        entries += [self._entry(n) for n in self.rng.sample(pas, min(self.shuffle_passive, len(pas)))]
        self.counters["shuffles"] += 1
        self._send("hv.shuffle", self.rng.choice(act), [self.name, self.ms.addresses, self.shuffle_ttl, entries])

    def _close_idle(self) -> None:
        """Close the sessions with nodes outside the active view that carried
        no message for a whole shuffle period.  A join, a forward-join's
        end, a shuffle reply or a refused neighbour request needs a session
        for one exchange (the paper's temporary connections); kept, they
        would add up to a session with every node this one ever shuffled
        with — the full mesh HyParView is there to avoid.  Closing flushes
        what is queued (:meth:`Connection.close`); the next message to
        that node opens a new session."""
        idle: dict[str, tuple[int, int]] = {}
        for conn in self.ms.connections:
            peer = conn.peer_name
            if not peer or peer in self.active or peer in self._pending or not conn.is_open:
                continue
            mark = (conn.msgs_in, conn.msgs_out)
            if self._idle.get(peer) == mark and not conn.queued_bytes:
                self.counters["sessions_closed"] += 1
                task = self.ms.loop.create_task(conn.close(self.shuffle_period))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            else:
                idle[peer] = mark
        self._idle = idle

    def _on_shuffle(self, msg: Message) -> None:
        origin, addrs, ttl, entries = msg.payload
        if msg.peer not in self.active and msg.peer != self.name:
            # shuffles travel over active links only: the sender holds a link
            # we do not (its hv.add crossed our hv.disconnect, or was lost
            # with a closing session).  Take the link, as its hv.add asked:
            # dropping it instead can cut off a group of nodes whose only
            # links to the rest were such half links, and HyParView has no
            # way to merge a partition again.
            self._add_active(msg.peer, tell=False)
        if origin == self.name:
            return
        nxt = sorted(self.active - {msg.peer, origin})
        if ttl > 1 and nxt:
            self._send("hv.shuffle", self.rng.choice(nxt), [origin, addrs, ttl - 1, entries])
            return
        self._learn(origin, addrs)
        pas = sorted(self.passive)
        reply = [self._entry(n) for n in self.rng.sample(pas, min(len(entries), len(pas)))]
        self._send("hv.shuffle_reply", origin, reply)
        self._integrate([[origin, addrs], *entries])

    def _on_shuffle_reply(self, msg: Message) -> None:
        self._integrate(msg.payload)

    def _integrate(self, entries: list[Any]) -> None:
        for name, addrs in entries:
            if name != self.name and name not in self.active and name not in self.passive:
                self._learn(name, addrs)
                self._add_passive(name)
