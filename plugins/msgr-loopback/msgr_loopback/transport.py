"""``loop://`` links: in-process, zero-copy, shaped by a :class:`SimNetwork`.

A link is two :class:`LoopLink` ends.  Each end keeps the frames it sent
that have not arrived yet in a queue of ``(arrival_time, frame, size)``;
one loop callback per end at a time (``call_soon`` for due frames,
``call_at`` for delayed ones) delivers every due frame in order — so
there is no task per link or per frame, and a frame is never delivered
from inside ``send``.
"""

from __future__ import annotations

import asyncio
import errno
import re
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from msgr_core.errors import ConfigError, FrameTooLarge, LinkClosed, UnsupportedAddress
from msgr_core.framing import MAX_SEGMENTS
from msgr_core.transport import (
    Buffer,
    Frame,
    HandlerFactory,
    Link,
    LinkHandler,
    Listener,
    Transport,
    TransportOptions,
)

from .network import SCHEME_PREFIX, SimNetwork, get_network

__all__ = ["LoopLink", "LoopListener", "LoopTransport"]

_NAME = re.compile(r"[A-Za-z0-9._~+-]+")


class _Unmade:
    """Stands in for the accepting side's handler until it is made."""

    def link_made(self, link: Link) -> None:
        pass

    def frame_received(self, frame: list[Buffer]) -> None:
        pass

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        pass


_UNMADE = _Unmade()


class LoopLink(Link):
    """One end of an in-process link.

    :ivar node: the node this end belongs to.
    :ivar peer: the other end.
    """

    __slots__ = (
        "_buffered",
        "_closing",
        "_delay",
        "_drop",
        "_ended",
        "_exc",
        "_handle",
        "_handler",
        "_high",
        "_jitter",
        "_loop",
        "_low",
        "_made",
        "_max",
        "_net",
        "_nstats",
        "_pause_pending",
        "_paused",
        "_queue",
        "_reading_paused",
        "_shaped",
        "_stats",
        "_version",
        "_when",
        "local_address",
        "node",
        "peer",
        "peer_address",
    )

    def __init__(
        self,
        net: SimNetwork,
        node: str,
        peer_node: str,
        options: TransportOptions,
        handler: LinkHandler,
        local_address: str,
        peer_address: str,
    ) -> None:
        self._net = net
        self._loop = net.loop
        self.node = node
        self.peer: LoopLink = self
        self._handler = handler
        self.local_address = local_address
        self.peer_address = peer_address
        self._max = options.max_frame_bytes
        self._high = options.high_watermark
        self._low = options.low_watermark
        self._queue: deque[tuple[float, list[Buffer] | None, int]] = deque()
        self._buffered = 0
        self._paused = False
        self._pause_pending = False
        self._handle: asyncio.Handle | None = None
        self._when = 0.0
        self._made = False
        self._reading_paused = False
        self._closing = False
        self._ended = False
        self._exc: BaseException | None = None
        self._stats = net._pair(node, peer_node)
        self._nstats = net.stats
        self._shaped = False
        self._version = -1
        self._delay = self._jitter = self._drop = 0.0

    def __repr__(self) -> str:
        state = "ended" if self._ended else "closing" if self._closing else "open"
        return f"<LoopLink {self.local_address} -> {self.peer_address} {state}>"

    # -- Link API -------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue ``frame``; the peer receives these very buffer objects.

        :raises FrameTooLarge: over ``max_frame_bytes`` (the link stays up).
        :raises ValueError: no buffer, or more than
            :data:`msgr_core.framing.MAX_SEGMENTS`.
        :raises LinkClosed: the link is closing or closed.
        """
        if self._closing:
            raise self._closed_error()
        n = len(frame)
        if n == 0 or n > MAX_SEGMENTS:
            raise ValueError(f"a frame has 1 to {MAX_SEGMENTS} buffers, got {n}")
        size = 0
        for buf in frame:
            size += buf.nbytes if type(buf) is memoryview else len(buf)
        if size > self._max:
            raise FrameTooLarge(size, self._max, peer=self.peer_address)
        if self._version != self._net._version:
            self._refresh()
        if self._shaped:
            self._enqueue_shaped(list(frame), size)
        else:
            # 0.0 = "due now"; behind frames still delayed, due with the last
            queue = self._queue
            queue.append((queue[-1][0] if queue else 0.0, list(frame), size))
            if self._handle is None and not self._held():
                self._schedule(queue[0][0])
            self._buffered += size
            self._nstats.frames_sent += 1
            if self._buffered > self._high and not self._paused and not self._pause_pending:
                self._pause_pending = True
                self._loop.call_soon(self._check_pause)

    def send_many(self, frames: Sequence[Frame]) -> None:
        """Queue several frames, as :meth:`send` each in turn."""
        for frame in frames:
            self.send(frame)

    def write_buffer_size(self) -> int:
        """Bytes sent on this end that have not reached the peer yet."""
        return self._buffered

    def close(self) -> None:
        """Deliver what is queued, then end the link: ``link_lost(None)`` on
        both ends.  Frames arriving at this end meanwhile are discarded.
        While the peer does not read (paused, stalled) the link lingers;
        :meth:`abort` does not wait."""
        if self._closing:
            return
        self._closing = True
        if not self._queue:
            self._finish()

    def abort(self) -> None:
        """End now, discarding what is queued: ``link_lost(None)`` here, and
        ``LinkClosed("... reset by peer")`` at the other end."""
        if self._ended:
            return
        self._net.stats.links_closed += 1
        self._end(None)
        self.peer._end(LinkClosed(f"link reset by peer {self.local_address}"))

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        """Stop receiving on this end (the link alone; see
        :meth:`SimNetwork.stall <msgr_loopback.SimNetwork.stall>` for a node):
        frames wait at the sending end, whose buffered bytes grow."""
        self._reading_paused = True

    def resume_reading(self) -> None:
        """Receive again: what waited arrives, in order."""
        if self._reading_paused:
            self._reading_paused = False
            self.peer._kick()

    # -- sending side ---------------------------------------------------------------

    def _enqueue_shaped(self, frame: list[Buffer], size: int) -> None:
        """:meth:`send` when a delay, jitter or drop rule applies."""
        net = self._net
        at = self._loop.time()
        if self._delay:
            at += self._delay
        if self._jitter:
            at += net._rng.random() * self._jitter
        queue = self._queue
        if queue and at < queue[-1][0]:
            at = queue[-1][0]  # jitter delays, never reorders
        if self._drop and net._rng.random() < self._drop:
            queue.append((at, None, size))
        else:
            queue.append((at, frame, size))
        self._buffered += size
        self._nstats.frames_sent += 1
        if self._handle is None and not self._held():
            self._schedule(queue[0][0])
        if self._buffered > self._high and not self._paused and not self._pause_pending:
            self._pause_pending = True
            self._loop.call_soon(self._check_pause)

    def _refresh(self) -> None:
        net = self._net
        self._version = net._version
        self._delay, self._jitter, self._drop = net._rules(self.node, self.peer.node)
        self._shaped = bool(self._delay or self._jitter or self._drop)

    def _schedule(self, at: float) -> None:
        """Deliver at loop time ``at`` (the queue head's); ``0.0``: now."""
        self._when = at
        if at and at > self._loop.time():
            self._handle = self._loop.call_at(at, self._flush)
        else:
            self._handle = self._loop.call_soon(self._flush)

    def _held(self) -> bool:
        """True while the peer does not read (not accepted yet, paused, stalled)."""
        peer = self.peer
        stalled = self._net._stalled
        return not peer._made or peer._reading_paused or bool(stalled and peer.node in stalled)

    def _kick(self) -> None:
        """Schedule delivery if frames wait and nothing is scheduled."""
        if self._handle is None and self._queue and not self._ended:
            self._schedule(self._queue[0][0])

    def _check_pause(self) -> None:
        self._pause_pending = False
        if not self._ended and not self._paused and self._buffered > self._high:
            self._paused = True
            self._handler.pause_writing()

    def _flush(self) -> None:
        """Deliver every due frame, in order (one call per end at a time)."""
        self._handle = None
        if self._ended:
            return
        peer = self.peer
        net = self._net
        stalled = net._stalled
        if not peer._made or peer._reading_paused or peer.node in stalled:
            return  # the accept / resume_reading / unstall kicks us
        # a timer may fire a clock tick early: what it was set for is due
        due = max(self._loop.time(), self._when)
        queue = self._queue
        count = len(queue)  # not what frame_received sends meanwhile
        frames = nbytes = 0
        receiver = peer._handler
        limit = peer._max
        try:
            while count:
                if queue[0][0] > due:
                    break
                _, frame, size = queue.popleft()
                count -= 1
                self._buffered -= size
                if frame is None:
                    self._stats.dropped += 1
                    self._nstats.frames_dropped += 1
                    self._fail(f"frame {self.node} -> {peer.node} dropped by simulated network")
                    return
                if peer._closing:
                    continue  # it called close(): it reads no more
                if size > limit:  # the receiver's limit may be lower than ours
                    self._nstats.links_broken += 1
                    peer._end(FrameTooLarge(size, limit, peer=peer.peer_address))
                    self._end(LinkClosed(f"peer {peer.local_address} refused a frame of {size} bytes"))
                    return
                frames += 1
                nbytes += size
                receiver.frame_received(frame)
                if self._ended or peer._reading_paused or (stalled and peer.node in stalled):
                    break
        except Exception as exc:
            self._loop.call_exception_handler({"message": f"frame_received failed on {peer!r}", "exception": exc})
            self._nstats.links_broken += 1
            peer._end(exc)
            self._end(LinkClosed(f"link broken: the handler of peer {peer.local_address} failed"))
            return
        finally:
            self._stats.frames += frames
            self._stats.bytes += nbytes
            self._nstats.frames_delivered += frames
            self._nstats.bytes_delivered += nbytes
        if self._ended:
            return
        if queue:
            if not peer._reading_paused and peer.node not in stalled:
                self._schedule(queue[0][0])
        elif self._closing:
            self._finish()
            return
        if self._paused and self._buffered <= self._low:
            self._paused = False
            self._handler.resume_writing()

    # -- ending ---------------------------------------------------------------------

    def _finish(self) -> None:
        """Orderly end after ``close`` drained the queue."""
        self._net.stats.links_closed += 1
        self._end(None)
        self.peer._end(None)

    def _fail(self, reason: str) -> None:
        """The network broke the link: both ends get :class:`LinkClosed`."""
        if self._ended:
            return
        self._net.stats.links_broken += 1
        self._end(LinkClosed(reason))
        self.peer._end(LinkClosed(reason))

    def _end(self, exc: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = self._closing = True
        self._exc = exc
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._queue.clear()
        self._buffered = 0
        self._net._forget_link(self)
        if self._made:
            self._loop.call_soon(self._lost, exc)

    def _lost(self, exc: BaseException | None) -> None:
        handler, self._handler = self._handler, _UNMADE
        handler.link_lost(exc)

    def _closed_error(self) -> LinkClosed:
        err = LinkClosed(f"link {self.local_address} -> {self.peer_address} is closed")
        if self._exc is not None:
            err.cause = self._exc
            err.__cause__ = self._exc
        return err

    # -- accepting side ---------------------------------------------------------------

    def _accept(self, factory: HandlerFactory) -> None:
        if self._ended:
            return
        try:
            handler = factory()
        except Exception as exc:
            self._loop.call_exception_handler({"message": f"handler factory failed for {self!r}", "exception": exc})
            self._net.stats.links_broken += 1
            self._end(exc)
            self.peer._end(LinkClosed(f"{self.local_address} failed to accept the link"))
            return
        self._handler = handler
        self._made = True
        handler.link_made(self)
        self.peer._kick()


class LoopListener(Listener):
    """A name on a :class:`SimNetwork` that accepts links."""

    def __init__(
        self,
        net: SimNetwork,
        name: str,
        node: str,
        factory: HandlerFactory,
        options: TransportOptions,
    ) -> None:
        self.address = SCHEME_PREFIX + name
        self.name = name
        self.node = node
        self.factory = factory
        self.options = options
        self._net = net
        self._closed = False

    def __repr__(self) -> str:
        return f"<LoopListener {self.address} node={self.node}{' closed' if self._closed else ''}>"

    async def aclose(self) -> None:
        """Free the name; links already made stay up.  Idempotent."""
        self.close()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        if self._closed:
            return
        self._closed = True
        if self._net._listeners.get(self.name) is self:
            del self._net._listeners[self.name]


class LoopTransport(Transport):
    """The ``loop://`` transport: see :mod:`msgr_loopback`."""

    schemes: ClassVar[tuple[str, ...]] = ("loop",)
    distribution: ClassVar[str] = "msgr-loopback"
    config_section: ClassVar[str] = "loop"
    config_defaults: ClassVar[dict[str, Any]] = {"network": "default", "node": ""}
    test_addresses: ClassVar[dict[str, str]] = {"loop": "loop://kit-{n}"}

    def __init__(self, scheme: str, options: TransportOptions) -> None:
        """:raises ConfigError: a bad ``[loop]`` setting."""
        super().__init__(scheme, options)
        settings = options.settings
        net = settings.get("network", "default")
        if not isinstance(net, str | SimNetwork):
            raise ConfigError("loop.network", net, "a network name or a SimNetwork")
        node = settings.get("node", "")
        if not isinstance(node, str) or (node and not _NAME.fullmatch(node)):
            raise ConfigError("loop.node", node, "a name of A-Z a-z 0-9 . _ ~ + - (or empty)")
        self._net_setting: str | SimNetwork = net
        self._net: SimNetwork | None = None
        self._node: str | None = node or None
        self._listeners: list[LoopListener] = []

    @property
    def network(self) -> SimNetwork:
        """The network this transport's links cross (resolved on first use,
        in the running loop)."""
        if self._net is None:
            setting = self._net_setting
            self._net = setting if isinstance(setting, SimNetwork) else get_network(setting)
            if self._node is not None:
                self._net._nodes.add(self._node)
        return self._net

    @property
    def node(self) -> str | None:
        """This transport's node name (``None`` until it listens or connects,
        unless ``[loop] node`` set it)."""
        return self._node

    def _parse(self, address: str, *, allow_empty: bool) -> str:
        prefix = f"{self.scheme}://"
        if not address.startswith(prefix):
            raise UnsupportedAddress(address, f"expected {prefix}name")
        name = address[len(prefix) :]
        if not name and allow_empty:
            return name
        if not _NAME.fullmatch(name):
            raise UnsupportedAddress(address, "a loop name is one or more of A-Z a-z 0-9 . _ ~ + -")
        return name

    def _own_node(self, net: SimNetwork, preferred: str) -> str:
        if self._node is None:
            self._node = preferred or net._unique("node")
            net._nodes.add(self._node)
        return self._node

    async def listen(self, address: str, handler_factory: HandlerFactory) -> LoopListener:
        """Take the name in ``address`` (``loop://`` alone: a generated one,
        reported in :attr:`LoopListener.address`).

        :raises UnsupportedAddress: not ``loop://name``.
        :raises OSError: the name is taken (``EADDRINUSE``), or the node is
            down (``ENETDOWN``).
        """
        name = self._parse(address, allow_empty=True)
        net = self.network
        if self._node is not None and self._node in net._down:
            raise OSError(errno.ENETDOWN, f"node {self._node} is down (SimNetwork.kill_node)")
        if name in net._listeners:
            raise OSError(errno.EADDRINUSE, f"{SCHEME_PREFIX}{name} is already bound")
        if not name:
            name = net._unique(self._node or "node")
        node = self._own_node(net, name)
        if node in net._down:
            raise OSError(errno.ENETDOWN, f"node {node} is down (SimNetwork.kill_node)")
        listener = LoopListener(net, name, node, handler_factory, self.options)
        net._listeners[name] = listener
        self._listeners.append(listener)
        return listener

    async def connect(self, address: str, handler: LinkHandler) -> LoopLink:
        """Link to the listener named in ``address``; ``handler.link_made``
        has run when this returns, the listener's handler is made just after.

        Takes one round trip of the configured delay.

        :raises UnsupportedAddress: not ``loop://name``.
        :raises ConnectionRefusedError: nothing listens there.
        :raises OSError: partitioned (``EHOSTUNREACH``), or this node is
            down (``ENETDOWN``).
        :raises TimeoutError: the round trip exceeds ``connect_timeout``.
        """
        name = self._parse(address, allow_empty=False)
        net = self.network
        node = self._own_node(net, "")
        try:
            listener = net._reachable(node, name)
            rtt = net._rules(node, listener.node)[0] + net._rules(listener.node, node)[0]
            if rtt > 0:
                timeout = self.options.connect_timeout
                if rtt > timeout:
                    await asyncio.sleep(timeout)
                    raise TimeoutError(errno.ETIMEDOUT, f"connect to {address} timed out after {timeout:g} s")
                await asyncio.sleep(rtt)
                listener = net._reachable(node, name)
        except OSError:
            net.stats.connects_refused += 1
            raise
        local = SCHEME_PREFIX + node
        client = LoopLink(net, node, listener.node, self.options, handler, local, address)
        server = LoopLink(net, listener.node, node, listener.options, _UNMADE, listener.address, local)
        client.peer = server
        server.peer = client
        net._add_link(client)
        net._add_link(server)
        net.stats.links_made += 1
        net.loop.call_soon(server._accept, listener.factory)
        client._made = True
        handler.link_made(client)
        return client

    async def aclose(self) -> None:
        """Close the listeners this transport opened (links stay up)."""
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
