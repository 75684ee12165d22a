"""The connecting end of a link: a DEALER socket of its own."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any

import zmq

from msgr_core.errors import AuthenticationFailed, FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.transport import LinkHandler

from ._link import (
    CLOSED,
    CONNECTING,
    EVENTS,
    NB,
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
    fd_address,
    recv_parts,
)
from ._settings import ZmqSettings, context
from ._wire import C_ACCEPT, C_HELLO, C_REFUSE, HEAD_SLACK, K_BATCH, K_PARTS, RAW, hello, parse_hello, unbatch

__all__ = ["ZmqAuthenticationFailed", "ZmqClientLink"]

_CLIENT_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CLOSED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)


class ZmqAuthenticationFailed(AuthenticationFailed, PermissionError):
    """The ZMTP security handshake failed (CURVE keys that do not match, or
    one side using CURVE and the other not).  Both a msgr
    :class:`~msgr_core.errors.AuthenticationFailed` and a
    :class:`PermissionError` (an ``OSError``), so code that treats any
    ``OSError`` from ``connect`` as "unreachable" does the right thing."""

    def __init__(self, message: str, *, peer: str = "") -> None:
        AuthenticationFailed.__init__(self, message, peer=peer)


def _handshake_error(event: int, value: int, address: str, curve: bool) -> Exception:
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == _MECHANISM_MISMATCH:
        if curve:
            how = "this side uses CURVE (zmq.curve_serverkey(s) set) and the listener does not"
        else:
            how = (
                "the listener uses CURVE (zmq.curve_server = true there) and this side does "
                "not: set zmq.curve_serverkey to the listener's public key"
            )
        return ZmqAuthenticationFailed(f"security mechanism mismatch: {how}", peer=address)
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return ZmqAuthenticationFailed(f"the listener refused our CURVE key (ZAP status {value})", peer=address)
    if curve:
        return ZmqAuthenticationFailed(
            "CURVE handshake failed: the server key configured for this address "
            "(zmq.curve_serverkeys / zmq.curve_serverkey) does not match the listener's key "
            "(the public key of its zmq.curve_secretkey)",
            peer=address,
        )
    return ProtocolError(f"ZMTP handshake failed (libzmq event {event}, {value})", peer=address)


class ZmqClientLink(ZmqLink):
    """A link made by ``connect``: one DEALER socket connected once, with
    reconnection off, so its connection *is* the link."""

    def __init__(
        self,
        address: str,
        scheme: str,
        settings: ZmqSettings,
        max_frame_bytes: int,
        high: int,
        low: int,
        loop: asyncio.AbstractEventLoop,
        on_end: Any,
    ) -> None:
        super().__init__(scheme, settings, max_frame_bytes, high, low, loop)
        self.peer_address = address
        self._fd: int | None = None  # the socket's zmq FD
        self._conn_fd: int | None = None
        self._monitor: SocketMonitor | None = None
        self._connected: asyncio.Future[None] | None = None
        self._handshake_error: Exception | None = None
        self._curve: tuple[bytes, bytes, bytes] | None = None
        self._flush_handle: asyncio.Handle | None = None
        self._service_handle: asyncio.Handle | None = None
        self._reading = True
        self._servicing = False  # in _service: it flushes what gets sent meanwhile
        self._flush_after = False
        self._on_end = on_end

    # -- connecting -----------------------------------------------------------------

    async def open(self, endpoint: str, handler: LinkHandler, timeout: float, ipv6: bool) -> None:
        """Connect, say hello, and wait for the accept.

        :raises OSError: refused / unreachable (``ConnectionRefusedError``),
            reset during the handshake, or ``TimeoutError``.
        :raises ZmqAuthenticationFailed: the security handshake failed.
        :raises ProtocolError: the listener is not a msgr-zmq peer.
        """
        st = self._settings
        sock = context().socket(zmq.DEALER)
        self._sock = sock
        try:
            st.apply(sock, self._max + HEAD_SLACK, ipv6=ipv6, handshake_timeout=timeout)
            sock.setsockopt(zmq.RECONNECT_IVL, -1)  # a new connection is a new link
            sock.setsockopt(zmq.CONNECT_TIMEOUT, max(1, int(timeout * 1000)))
            self._curve = st.curve_for(self.peer_address)
            if self._curve is not None:
                public, secret, server = self._curve
                sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
                sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
                sock.setsockopt(zmq.CURVE_SERVERKEY, server)
            self._monitor = SocketMonitor(sock, _CLIENT_EVENTS, self._on_event, self._loop)
            self._fd = sock.FD
            self._loop.add_reader(self._fd, self._service)
            self._handler = handler
            self._connected = self._loop.create_future()
            try:
                sock.connect(endpoint)
            except ZMQError as exc:
                raise OSError(exc.errno, f"cannot connect to {self.peer_address}: {exc}") from None
            # first in the queue: out as soon as libzmq takes it
            self._queue.append((hello(C_HELLO, self._max), 0, RAW, None))
            self._drain_queue()
            self._schedule_service()
            try:
                async with asyncio.timeout(timeout):
                    await self._connected
            except TimeoutError:
                raise TimeoutError(
                    f"connect to {self.peer_address}: no msgr-zmq answer within {timeout:g} s (limits.connect_timeout)"
                ) from None
        except BaseException:
            if self._state == CONNECTING:
                self._handler = None
                self._connected = None
                self._end(None)
            raise

    def _fail_connect(self, exc: BaseException) -> None:
        fut = self._connected
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        # the coroutine in open() releases the socket

    def _accepted(self, head: bytes) -> None:
        if self._state != CONNECTING:
            raise ProtocolError("a second accept", peer=self.peer_address)
        self._peer_max = parse_hello(head, self.peer_address)
        self._state = OPEN
        handler = self._handler
        if handler is None:  # pragma: no cover - open() was cancelled
            return
        self._frame_received = handler.frame_received
        self._call(handler.link_made, self)
        fut = self._connected
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- the socket on the loop ---------------------------------------------------------

    def _want_flush(self) -> None:
        if self._servicing:
            self._flush_after = True  # _service flushes before it returns
        elif self._flush_handle is None and self._sock is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        s = self._sock
        if s is None:
            return
        self._drain_queue()
        self._check_watermarks()
        s = self._sock
        if s is None:
            return
        # a send processes libzmq's commands and may have eaten the FD's edge
        try:
            ev = _get(s, EVENTS)
        except ZMQError:
            return
        if (ev & POLLIN and self._reading) or (ev & POLLOUT and (self._queue or self._final)):
            self._schedule_service()

    def _schedule_service(self) -> None:
        if self._service_handle is None and self._sock is not None:
            self._service_handle = self._loop.call_soon(self._service_soon)

    def _service_soon(self) -> None:
        self._service_handle = None
        self._service()

    def _service(self) -> None:
        """The socket's FD fired (or more work remains): read what is
        readable, write what is writable, until libzmq has nothing for us —
        its FD only signals *changes*, so stopping early would stall.  What
        the handlers sent meanwhile (acks, replies) goes out before we
        return, not one loop iteration later."""
        self._flushing_after(self._service_io)

    def _flushing_after(self, fn: Callable[[], None]) -> None:
        outer = self._servicing
        self._servicing = True
        try:
            fn()
        finally:
            self._servicing = outer
        if self._flush_after and not outer:
            self._flush_after = False
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
            if ev & POLLOUT and (self._queue or self._final):
                self._drain_queue()
                self._check_watermarks()
                busy = True
            if ev & POLLIN and self._reading and not self._read(READ_BUDGET):
                busy = True
            if not busy:
                return
        self._schedule_service()

    def _read(self, budget: int) -> bool:
        """Deliver about ``budget`` frames; ``True`` once nothing is left."""
        s = self._sock
        recv = _recv
        mx = self._max
        peer = self.peer_address
        try:
            while budget > 0:
                if s is None or not self._reading:
                    return True
                try:
                    head = recv(s, NB)
                except Again:
                    return True
                if not head:
                    raise ProtocolError("an empty message", peer=peer)
                k = head[0]
                if k == K_BATCH:
                    frames, err = unbatch(head, mx, peer)
                    budget -= len(frames) + 1
                elif k == K_PARTS:
                    frames = [recv_parts(s, head, mx, self._thr, peer, False)]
                    err = None
                    budget -= 1
                else:
                    self._control(k, head)
                    s = self._sock
                    budget -= 1
                    continue
                if self._state == OPEN:
                    self._deliver(frames)
                elif self._state == CONNECTING and frames:
                    raise ProtocolError("a frame before the handshake completed", peer=peer)
                if err is not None:
                    raise err
                s = self._sock
        except (ProtocolError, FrameTooLarge) as exc:
            self._bad_input(exc)
            return True
        except ZMQError as exc:
            self._bad_input(LinkClosed(f"receive from {peer} failed: {exc}"))
            return True
        return False

    def _control_other(self, kind: int, head: bytes) -> None:
        if kind == C_ACCEPT:
            self._accepted(head)
        elif kind == C_REFUSE and self._state == CONNECTING:
            reason = head[1:].decode("utf-8", "replace")
            self._fail_connect(
                ConnectionRefusedError(errno.ECONNREFUSED, f"{self.peer_address} refused the link: {reason}")
            )
        else:
            super()._control_other(kind, head)

    def _bad_input(self, exc: BaseException) -> None:
        if self._state == CONNECTING:
            self._fail_connect(exc)
        else:
            self._end(exc)

    def _on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self._conn_fd = value
            self.local_address = fd_address(value, self._scheme, peer=False)
        elif event & _HANDSHAKE_FAILED:
            err = _handshake_error(event, value, self.peer_address, self._curve is not None)
            self._handshake_error = err
            if self._state == CONNECTING:
                self._fail_connect(err)
        elif event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED, zmq.EVENT_CONNECT_RETRIED):
            if self._state == CONNECTING:
                if self._handshake_error is not None:
                    self._fail_connect(self._handshake_error)
                elif event == zmq.EVENT_DISCONNECTED:
                    self._fail_connect(
                        ConnectionResetError(
                            errno.ECONNRESET,
                            f"{self.peer_address} dropped the connection during the handshake",
                        )
                    )
                else:
                    self._fail_connect(
                        ConnectionRefusedError(errno.ECONNREFUSED, f"cannot connect to {self.peer_address}")
                    )
            elif self._state < CLOSED:
                # what arrived before the disconnect is delivered first
                if self._reading:
                    while self._sock is not None and not self._read(READ_BUDGET):
                        pass
                self._peer_gone()

    # -- reading control (tests) -----------------------------------------------------

    def pause_reading(self) -> None:
        """Stop reading this link's socket; libzmq's queues fill up and the
        peer's sends back up (its ``pause_writing``)."""
        self._reading = False

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._schedule_service()

    # -- ending ---------------------------------------------------------------------

    def _release(self, exc: BaseException | None, *, notify_peer: bool, linger: bool) -> None:
        self._fail_connect(
            exc if isinstance(exc, OSError) else ConnectionAbortedError(f"connect to {self.peer_address} aborted")
        )
        sock, self._sock = self._sock, None
        for h in (self._flush_handle, self._service_handle):
            if h is not None:
                h.cancel()
        self._flush_handle = self._service_handle = None
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if sock is not None:
            # closing the DEALER ends the connection: the peer sees it at once
            sock.close(self._settings.linger_ms if linger else 0)
        if self._on_end is not None:
            self._on_end(self)
            self._on_end = None

    def _teardown_now(self) -> None:
        """Used by the transport's ``aclose``."""
        if self._state != CLOSED:
            self._end(LinkClosed("transport closed"))
