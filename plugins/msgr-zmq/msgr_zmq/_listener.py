"""The listening end: one ROUTER socket, and a link per peer connection on it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import zmq

from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.transport import HandlerFactory, Listener

from ._link import (
    _ABORT,
    CLOSED,
    EVENTS,
    NB,
    NB_MORE,
    OPEN,
    POLLIN,
    POLLOUT,
    READ_BUDGET,
    Again,
    SocketMonitor,
    ZMQError,
    ZmqLink,
    _get,
    _recv,
    _send,
    fd_address,
    recv_parts,
    shutdown_fd,
    skip_rest,
)
from ._settings import ZmqSettings, context
from ._wire import C_ACCEPT, C_HELLO, C_REFUSE, HEAD_SLACK, K_BATCH, K_PARTS, hello, parse_hello, unbatch

__all__ = ["ZmqListener", "ZmqServerLink"]

logger = logging.getLogger("msgr.zmq")

_LISTENER_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)

#: While a peer's pipe is full, retry at least this often (seconds): a
#: ROUTER's POLLOUT says "some peer is writable", not which one.
_RETRY_FIRST = 0.002
_RETRY_MAX = 0.05


class ZmqServerLink(ZmqLink):
    """A link accepted by a :class:`ZmqListener`: one peer connection of
    its ROUTER socket, addressed by the routing id libzmq gave it."""

    def __init__(self, listener: ZmqListener, rid: bytes, conn_fd: int, peer_max: int, **kw: Any) -> None:
        super().__init__(**kw)
        self._listener = listener
        self._rid = rid
        self._conn_fd = conn_fd
        self._sock = listener._sock
        self._peer_max = peer_max
        self.local_address = listener.address
        self.peer_address = fd_address(conn_fd, self._scheme, peer=True)

    def _want_flush(self) -> None:
        self._listener._want_flush(self)

    def _flushing_after(self, fn: Callable[[], None]) -> None:
        self._listener._flushing_after(fn)

    def pause_reading(self) -> None:
        """Stop reading.  The listener's links share one socket, so this
        stops reading it for all of them until every paused link resumes
        (a testing aid: it is how a peer's sends are made to back up)."""
        self._listener._pause(self, True)

    def resume_reading(self) -> None:
        self._listener._pause(self, False)

    def _release(self, exc: BaseException | None, *, notify_peer: bool, linger: bool) -> None:
        self._sock = None
        self._listener._forget(self, exc, notify_peer)


#: bound endpoint -> resolved once libzmq reports that listening socket
#: closed.  libzmq releases an address in its I/O thread, after ``close``
#: returns: a listener restarted on the same address in this process waits
#: for this instead of failing with "address already in use".
_releasing: dict[str, asyncio.Future[None]] = {}

#: how long a closing listener waits for libzmq to report its socket closed
_RELEASE_TIMEOUT = 1.0


async def wait_released(endpoint: str) -> None:
    """Until a listener of this process that was bound at ``endpoint`` has
    released it (at most ``_RELEASE_TIMEOUT``: see ``ZmqListener._unbind``);
    at once if none is closing."""
    fut = _releasing.get(endpoint)
    if fut is not None:
        await asyncio.shield(fut)


class ZmqListener(Listener):
    """A bound ROUTER socket.

    Connections are accepted by libzmq; a connection becomes a link when
    its hello arrives (and is answered).  ``aclose`` refuses further
    hellos, and the socket itself closes once its last link is gone (a
    ROUTER cannot stop listening without dropping the connections it
    accepted).
    """

    def __init__(
        self,
        scheme: str,
        endpoint: str,
        factory: HandlerFactory,
        settings: ZmqSettings,
        max_frame_bytes: int,
        high: int,
        low: int,
        on_closed: Any,
        hello_timeout: float = 10.0,
    ) -> None:
        self.address = ""
        self._hello_timeout = hello_timeout
        self._scheme = scheme
        self._endpoint = endpoint
        self._factory = factory
        self._settings = settings
        self._max = max_frame_bytes
        self._high = high
        self._low = low
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._sock: zmq.Socket[Any] | None = None
        self._fd: int | None = None
        self._monitor: SocketMonitor | None = None
        self._links: dict[bytes, ZmqServerLink] = {}
        self._by_fd: dict[int, ZmqServerLink] = {}
        self._live: set[int] = set()  # connection fds libzmq reported accepted
        self._pending: dict[ZmqServerLink, None] = {}
        self._blocked: dict[ZmqServerLink, None] = {}
        self._paused: set[ZmqServerLink] = set()
        # routing ids of links that ended with the peer told (close, abort):
        # what it sent meanwhile is dropped without shutting it down
        self._ended: dict[bytes, int] = {}
        self._ended_fd: dict[int, bytes] = {}
        # which accept an fd is (descriptors are reused)
        self._fd_gen: dict[int, int] = {}
        self._accepts = 0
        self._flush_handle: asyncio.Handle | None = None
        self._service_handle: asyncio.Handle | None = None
        self._retry_handle: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_FIRST
        self._servicing = False  # in _service: it flushes what gets sent meanwhile
        self._accepting = True
        self._bound = ""
        self._ipc_path = ""
        self._ipc_id: tuple[int, int] | None = None
        self._unbound: asyncio.Future[None] | None = None
        self.strangers = 0  #: messages dropped from connections that are no link

    def __repr__(self) -> str:
        state = "listening" if self._accepting else ("draining" if self._sock else "closed")
        return f"<ZmqListener {self.address} {state}, {len(self._links)} link(s)>"

    def bind(self, ipv6: bool) -> None:
        """Create the ROUTER socket and bind it.

        :raises OSError: the address cannot be bound.
        """
        st = self._settings
        sock = context().socket(zmq.ROUTER)
        self._sock = sock
        try:
            st.apply(sock, self._max + HEAD_SLACK, ipv6=ipv6, handshake_timeout=self._hello_timeout)
            # unroutable / full: an error, never a silent drop
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if st.curve_server_secret is not None:
                sock.setsockopt(zmq.CURVE_SERVER, 1)
                sock.setsockopt(zmq.CURVE_SECRETKEY, st.curve_server_secret)
            self._monitor = SocketMonitor(sock, _LISTENER_EVENTS, self._on_event, self._loop)
            try:
                sock.bind(self._endpoint)
            except ZMQError as exc:
                raise OSError(exc.errno, f"cannot listen on {self._endpoint}: {exc}") from None
            bound = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            self._bound = bound
            self.address = self._scheme + bound[bound.index("://") :]
            if bound.startswith("ipc://"):
                # libzmq leaves the socket file behind: ours to remove
                self._ipc_path = bound[len("ipc://") :]
                info = os.stat(self._ipc_path)
                self._ipc_id = (info.st_dev, info.st_ino)
            self._fd = sock.FD
            self._loop.add_reader(self._fd, self._service)
        except BaseException:
            self._shutdown()
            raise

    async def aclose(self) -> None:
        """Stop accepting: later connects are refused.  Links already made
        stay up, and the socket closes with the last of them; without
        links, the address is free when this returns.  Idempotent."""
        self._accepting = False
        sock = self._sock
        if sock is not None and not self._links:
            # unbind and wait until libzmq has really closed the listening socket
            fut = self._unbind()
            if fut is not None:
                await asyncio.shield(fut)
        if not self._links:
            self._shutdown()
        await asyncio.sleep(0)

    def shutdown(self) -> None:
        """Close the socket now, ending every link on it (transport ``aclose``)."""
        self._accepting = False
        for link in list(self._links.values()):
            link._end(LinkClosed("transport closed"))
        self._shutdown()

    def _unbind(self) -> asyncio.Future[None] | None:
        """Stop listening (once): the future resolves when libzmq reports the
        listening socket closed (``EVENT_CLOSED``), i.e. the address is free;
        ``None`` if the socket was never bound."""
        sock = self._sock
        if self._unbound is None and sock is not None and self._bound:
            bound = self._bound
            fut = self._unbound = self._loop.create_future()
            _releasing[bound] = fut

            def released(_f: asyncio.Future[None]) -> None:
                if _releasing.get(bound) is fut:
                    del _releasing[bound]

            fut.add_done_callback(released)
            try:
                sock.unbind(bound)
            except ZMQError:
                fut.set_result(None)
            else:
                self._loop.call_later(_RELEASE_TIMEOUT, self._release_overdue, fut)
        return self._unbound

    def _release_overdue(self, fut: asyncio.Future[None]) -> None:
        # the one bound on every wait for the address: a monitor that never
        # reports must not leave it "closing"
        if not fut.done():
            logger.warning("%s: libzmq did not report the listening socket closed", self.address)
            fut.set_result(None)

    def _shutdown(self) -> None:
        self._accepting = False
        for h in (self._flush_handle, self._service_handle, self._retry_handle):
            if h is not None:
                h.cancel()
        self._flush_handle = self._service_handle = self._retry_handle = None
        fut = self._unbind()
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            if fut is None or fut.done():
                monitor.close()
            else:
                # it reports EVENT_CLOSED once libzmq has let the address go
                fut.add_done_callback(lambda _f: monitor.close())
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        self._remove_ipc_file()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close(self._settings.linger_ms)
            if self._on_closed is not None:
                self._on_closed(self)
                self._on_closed = None

    def _remove_ipc_file(self) -> None:
        path, self._ipc_path = self._ipc_path, ""
        if not path:
            return
        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) == self._ipc_id:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # pragma: no cover - permissions changed under us
            logger.warning("cannot remove ipc socket %s: %s", path, exc)

    # -- writing --------------------------------------------------------------------

    def _want_flush(self, link: ZmqServerLink) -> None:
        self._pending[link] = None
        if self._flush_handle is None and self._sock is not None and not self._servicing:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        self._flush_pending()
        s = self._sock
        if s is not None and not self._paused:
            # our sends processed libzmq's commands and may have eaten the FD's edge
            try:
                if _get(s, EVENTS) & POLLIN:
                    self._schedule_service()
            except ZMQError:
                pass

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, {}
        blocked = self._blocked
        for link in pending:
            if link._state >= CLOSED:
                blocked.pop(link, None)
                continue
            if link._drain_queue():
                blocked.pop(link, None)
            elif link._state < CLOSED:
                blocked[link] = None
            link._check_watermarks()
        if blocked:
            if self._retry_handle is None and self._sock is not None:
                self._retry_handle = self._loop.call_later(self._retry_delay, self._retry)
                self._retry_delay = min(_RETRY_MAX, self._retry_delay * 2)
        else:
            self._retry_delay = _RETRY_FIRST

    def _retry(self) -> None:
        self._retry_handle = None
        for link in self._blocked:
            self._pending[link] = None
        self._flush()

    # -- reading ----------------------------------------------------------------------

    def _schedule_service(self) -> None:
        if self._service_handle is None and self._sock is not None:
            self._service_handle = self._loop.call_soon(self._service_soon)

    def _service_soon(self) -> None:
        self._service_handle = None
        self._service()

    def _service(self) -> None:
        """The socket's FD fired (or more work remains): read and write
        until libzmq has nothing for us; then send what the handlers queued
        meanwhile (acks, replies) at once, not one loop iteration later."""
        self._flushing_after(self._service_io)

    def _flushing_after(self, fn: Callable[[], None]) -> None:
        outer = self._servicing
        self._servicing = True
        try:
            fn()
        finally:
            self._servicing = outer
        if self._pending and not outer:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()

    def _service_io(self) -> None:
        for _ in range(4):
            s = self._sock
            if s is None:
                return
            try:
                ev = _get(s, EVENTS)
            except ZMQError:
                return
            busy = False
            if ev & POLLOUT and self._blocked:
                for link in self._blocked:
                    self._pending[link] = None
                self._flush_pending()
            if ev & POLLIN and not self._paused and not self._read(READ_BUDGET):
                busy = True
            if not busy:
                return
        self._schedule_service()

    def _read(self, budget: int) -> bool:
        """Dispatch about ``budget`` frames; ``True`` once nothing is left.

        Each message's last part is taken as a :class:`zmq.Frame` to check
        that the message ends where its head says: a peer cannot make us
        take its parts for another connection's message.
        """
        s = self._sock
        recv = _recv
        links = self._links
        mx = self._max
        while budget > 0:
            if s is None or self._paused:
                return True
            try:
                rid = recv(s, NB)
                f = recv(s, NB, False)
            except Again:
                return True
            except ZMQError:
                return True
            link = links.get(rid)
            if link is None:
                self._stranger(s, rid, f)
                s = self._sock
                budget -= 1
                continue
            head = f.bytes
            try:
                if not head:
                    if f.more:
                        skip_rest(s)
                    raise ProtocolError("an empty message", peer=link.peer_address)
                k = head[0]
                err: Exception | None = None
                if k == K_PARTS:
                    if not f.more:
                        raise ProtocolError("a frame head without its parts", peer=link.peer_address)
                    frames = [recv_parts(s, head, mx, link._thr, link.peer_address, True)]
                    budget -= 1
                else:
                    if f.more:
                        skip_rest(s)
                        raise ProtocolError("a message with extra parts", peer=link.peer_address)
                    if k == K_BATCH:
                        frames, err = unbatch(head, mx, link.peer_address)
                        budget -= len(frames) + 1
                    else:
                        link._control(k, head)
                        s = self._sock
                        budget -= 1
                        continue
                if link._state == OPEN:
                    link._deliver(frames)
                if err is not None:
                    raise err
            except (ProtocolError, FrameTooLarge) as exc:
                # a misbehaving peer: that link alone ends, and its connection
                link._end(exc, notify_peer=True)
            except ZMQError as exc:
                link._end(LinkClosed(f"receive failed: {exc}"))
            s = self._sock
        return False

    def _stranger(self, s: zmq.Socket[Any], rid: bytes, f: zmq.Frame) -> None:
        """A message from a connection that is no link: a hello, or junk."""
        fd = f.get(zmq.SRCFD)
        head = f.bytes
        if f.more:
            skip_rest(s)
        elif head and head[0] == C_HELLO:
            fd_ended = self._ended.pop(rid, None)
            if fd_ended is not None:
                self._ended_fd.pop(fd_ended, None)
            self._hello(s, rid, fd, head)
            return
        self.strangers += 1
        if rid not in self._ended:
            # not a msgr-zmq peer: drop its connection
            self._kick(fd, None)

    def _hello(self, s: zmq.Socket[Any], rid: bytes, fd: int, head: bytes) -> None:
        if self._monitor is not None:
            self._monitor.drain()  # know which connections are still there
        peer = fd_address(fd, self._scheme, peer=True) if fd in self._live else ""
        try:
            peer_max = parse_hello(head, peer)
        except ProtocolError as exc:
            logger.warning("%s: refusing a connection: %s", self.address, exc)
            self._refuse(s, rid, str(exc))
            self._kick(fd, None)
            return
        if not self._accepting:
            self._refuse(s, rid, "the listener is closed")
            return
        if fd not in self._live:
            return  # the connection is already gone
        stale = self._by_fd.get(fd)
        if stale is not None:
            stale._peer_gone()  # its fd was reused: that connection is over
        link = ZmqServerLink(
            self,
            rid,
            fd,
            peer_max,
            scheme=self._scheme,
            settings=self._settings,
            max_frame_bytes=self._max,
            high=self._high,
            low=self._low,
            loop=self._loop,
        )
        try:
            _send(s, rid, NB_MORE)
            _send(s, hello(C_ACCEPT, self._max), 0)
        except ZMQError:
            return  # gone (or full, which a fresh connection cannot be)
        self._links[rid] = link
        self._by_fd[fd] = link
        try:
            handler = self._factory()
        except Exception as exc:
            self._loop.call_exception_handler(
                {"message": f"{self.address}: the link handler factory raised", "exception": exc}
            )
            link._end(None, notify_peer=True)
            return
        link._handler = handler
        link._frame_received = handler.frame_received
        link._state = OPEN
        link._call(handler.link_made, link)

    def _refuse(self, s: zmq.Socket[Any], rid: bytes, reason: str) -> None:
        try:
            _send(s, rid, NB_MORE)
            _send(s, bytes((C_REFUSE,)) + reason.encode(), 0)
        except ZMQError:
            pass

    def _kick(self, fd: int | None, link: ZmqServerLink | None) -> None:
        """Drop the connection on ``fd`` — only if it is still the one we
        mean (alive, and bound to ``link``), never a reused descriptor."""
        if fd is None:
            return
        if self._monitor is not None:
            self._monitor.drain()
        if fd in self._live and self._by_fd.get(fd) is link:
            shutdown_fd(fd)

    def _on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self._live.add(value)
            self._accepts += 1
            self._fd_gen[value] = self._accepts
            self._loop.call_later(self._hello_timeout, self._hello_overdue, value, self._accepts)
            stale = self._by_fd.get(value)
            if stale is not None:
                stale._peer_gone()
        elif event == zmq.EVENT_DISCONNECTED:
            self._live.discard(value)
            self._fd_gen.pop(value, None)
            rid = self._ended_fd.pop(value, None)
            if rid is not None:
                self._ended.pop(rid, None)
            link = self._by_fd.pop(value, None)
            if link is not None and link._state < CLOSED:
                # not from inside whatever is running (a read may be): next turn
                self._loop.call_soon(self._disconnected, link)
        elif event == zmq.EVENT_CLOSED:
            fut = self._unbound
            if fut is not None and not fut.done():
                fut.set_result(None)
        elif event & _HANDSHAKE_FAILED:
            # NO_DETAIL is mostly a connection dropped mid-handshake (a probe)
            logger.log(
                logging.INFO if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL else logging.WARNING,
                "%s: a connection failed the ZMTP handshake (libzmq event %d, %d): "
                "check zmq.curve_server / zmq.curve_serverkey on both sides",
                self.address,
                event,
                value,
            )

    def _hello_overdue(self, fd: int, gen: int) -> None:
        """A connection that has not said hello in time is dropped (it holds
        a descriptor and libzmq buffers, and is no msgr peer)."""
        if self._sock is None or self._fd_gen.get(fd) != gen:
            return
        if self._monitor is not None:
            self._monitor.drain()
        if self._fd_gen.get(fd) == gen and fd not in self._by_fd and fd not in self._ended_fd:
            logger.info("%s: dropping a connection that sent no hello in %g s", self.address, self._hello_timeout)
            shutdown_fd(fd)

    def _disconnected(self, link: ZmqServerLink) -> None:
        if link._state < CLOSED:
            # deliver what that peer sent before it went, then end its link
            if not self._paused:
                while self._sock is not None and not self._read(READ_BUDGET):
                    pass
            link._peer_gone()

    # -- links ending ---------------------------------------------------------------------

    def _pause(self, link: ZmqServerLink, paused: bool) -> None:
        if paused:
            self._paused.add(link)
        elif link in self._paused:
            self._paused.discard(link)
            if not self._paused:
                self._schedule_service()

    def _forget(self, link: ZmqServerLink, exc: BaseException | None, notify_peer: bool) -> None:
        rid = link._rid
        fd = link._conn_fd
        if rid is not None and self._links.get(rid) is link:
            del self._links[rid]
        self._pending.pop(link, None)
        self._blocked.pop(link, None)
        self._pause(link, False)
        s = self._sock
        if notify_peer and s is not None and rid is not None:
            told = False
            try:
                _send(s, rid, NB_MORE)
                _send(s, _ABORT, 0)
                told = True
            except ZMQError:
                pass
            if not told or isinstance(exc, ProtocolError | FrameTooLarge):
                self._kick(fd, link)
        if self._by_fd.get(fd) is link:
            del self._by_fd[fd]
            if rid is not None and fd in self._live:
                self._ended[rid] = fd
                self._ended_fd[fd] = rid
        if not self._accepting and not self._links:
            self._loop.call_soon(self._shutdown)
