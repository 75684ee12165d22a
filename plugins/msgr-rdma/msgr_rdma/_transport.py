"""The :class:`RdmaTransport` (scheme ``rdma``), its ``[rdma]`` settings and
connection setup.

Backends (``[rdma] backend``, always chosen explicitly):

``"verbs"`` (default)
    a device through pyverbs; connection setup out of band over TCP to
    ``host:port`` (:mod:`msgr_rdma._oob`).
``"emulated"``
    the strict emulation, both ends in one process: setup through an
    in-process directory of listeners by (host, port).
``"emulated-ipc"``
    the strict emulation across processes: the same TCP setup as
    ``"verbs"``, after which that TCP connection carries the emulated verbs
    (:class:`msgr_rdma.emulation.IpcWire`); each transport is its own
    emulated NIC with its own MR table.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from msgr_core.errors import ConfigError, ProtocolError, UnsupportedAddress
from msgr_core.transport import HandlerFactory, Link, LinkHandler, Listener, Transport, TransportOptions, split_address

from ._link import EXTRA_RECVS, MAX_SEGMENTS, LinkParams, RdmaLink
from ._oob import (
    KIND_EMU_IPC,
    KIND_NAMES,
    KIND_VERBS,
    M_INFO,
    M_READY,
    M_REFUSE,
    ConnInfo,
    OobChannel,
    decode_info,
    encode_info,
    open_channel,
)
from .emulation import EmuContext, EmuFabric
from .verbs import Access, CompletionQueue, MemoryRegion, QueuePair, VerbsContext, VerbsError, open_verbs_device

__all__ = ["DEFAULTS", "RdmaSettings", "RdmaTransport", "dial", "parse_address"]

log = logging.getLogger("msgr_rdma")

SECTION = "rdma"
BACKENDS = ("verbs", "emulated", "emulated-ipc")
_KINDS = {"verbs": KIND_VERBS, "emulated-ipc": KIND_EMU_IPC}

#: The ``[rdma]`` section's keys and defaults.
DEFAULTS: dict[str, Any] = {
    "backend": "verbs",
    "device": "",
    "port": 1,
    "gid_index": 0,
    "buffer_size": 8192,
    "recv_count": 64,
    "inline_threshold": 128,
    "rendezvous_threshold": 65536,
    "max_reads": 8,
    "mr_cache_bytes": 64 * 1024 * 1024,
    "poll_batch": 64,
    "emu_qp_error_after": 0,
}

_MIN_BUFFER = 64


@dataclass(frozen=True, slots=True)
class RdmaSettings:
    """The checked ``[rdma]`` settings."""

    backend: str
    device: str
    port: int
    gid_index: int
    link: LinkParams
    emu_qp_error_after: int = 0

    @classmethod
    def from_mapping(cls, given: dict[str, Any]) -> RdmaSettings:
        """Check ``given`` (partial or whole ``[rdma]`` section).

        :raises ConfigError: an unknown key or a bad value, named.
        """
        values = dict(DEFAULTS)
        for key, value in given.items():
            if key not in DEFAULTS:
                raise ConfigError(f"{SECTION}.{key}", value, f"one of {', '.join(sorted(DEFAULTS))}")
            values[key] = value
        backend = values["backend"]
        if backend not in BACKENDS:
            raise ConfigError(
                f"{SECTION}.backend",
                backend,
                '"verbs" (an RDMA device through pyverbs), "emulated" (the in-process test backend) or '
                '"emulated-ipc" (the test backend across processes)',
            )
        if not isinstance(values["device"], str):
            raise ConfigError(f"{SECTION}.device", values["device"], 'a device name (ibv_devices), or ""')
        for key in (
            "port",
            "gid_index",
            "buffer_size",
            "recv_count",
            "inline_threshold",
            "rendezvous_threshold",
            "max_reads",
            "mr_cache_bytes",
            "poll_batch",
            "emu_qp_error_after",
        ):
            v = values[key]
            low = 0 if key in ("gid_index", "inline_threshold", "mr_cache_bytes", "emu_qp_error_after") else 1
            if key == "buffer_size":
                low = _MIN_BUFFER
            if key == "recv_count":
                low = 3
            if not isinstance(v, int) or isinstance(v, bool) or v < low or v > 1 << 40:
                raise ConfigError(f"{SECTION}.{key}", v, f"an integer >= {low}")
        if values["recv_count"] > 0xFFFF:
            raise ConfigError(f"{SECTION}.recv_count", values["recv_count"], "at most 65535")
        if values["emu_qp_error_after"] and not backend.startswith("emulated"):
            # fault injection exists only in the emulation: never ignore it silently
            raise ConfigError(
                f"{SECTION}.emu_qp_error_after", values["emu_qp_error_after"], '0 with backend = "verbs"'
            )
        params = LinkParams(
            buffer_size=values["buffer_size"],
            recv_count=values["recv_count"],
            inline_threshold=values["inline_threshold"],
            rendezvous_threshold=values["rendezvous_threshold"],
            max_reads=values["max_reads"],
            mr_cache_bytes=values["mr_cache_bytes"],
            poll_batch=values["poll_batch"],
        )
        return cls(
            backend, values["device"], values["port"], values["gid_index"], params, values["emu_qp_error_after"]
        )


def parse_address(address: str, *, listen: bool) -> tuple[str, int]:
    """``(host, port)`` of ``rdma://host:port`` (port 0 only to listen).

    :raises UnsupportedAddress: anything else.
    """
    _scheme, host, port, path = split_address(address, ("rdma",))
    if not host:
        raise UnsupportedAddress(address, "expected rdma://host:port")
    if path not in ("", "/"):
        raise UnsupportedAddress(address, "an rdma address has no path")
    if port is None:
        raise UnsupportedAddress(address, "expected rdma://host:port (no port given)")
    if port == 0 and not listen:
        raise UnsupportedAddress(address, "port 0 means 'pick one' and can only be listened on")
    return host, port


def _fmt(host: str, port: int) -> str:
    return f"rdma://[{host}]:{port}" if ":" in host else f"rdma://{host}:{port}"


def _fmt_peer(name: object) -> str:
    if isinstance(name, tuple) and len(name) >= 2:
        return _fmt(str(name[0]), int(name[1]))
    return "rdma://?"


class _EmuDirectory:
    """Out-of-band connection setup for the in-process emulation: listeners
    by (host, port), standing in for the TCP exchange (QP numbers, receive
    credits, buffer sizes)."""

    def __init__(self) -> None:
        self.listeners: dict[tuple[str, int], RdmaListener] = {}
        self._ports = itertools.count(18515)

    def bind(self, host: str, port: int, listener: RdmaListener) -> int:
        if port == 0:
            port = next(p for p in self._ports if (host, p) not in self.listeners)
        elif (host, port) in self.listeners:
            raise OSError(errno.EADDRINUSE, f"rdma://{host}:{port} is already listened on")
        self.listeners[(host, port)] = listener
        return port


_DIRECTORY = _EmuDirectory()


class RdmaListener(Listener):
    def __init__(self, transport: RdmaTransport, host: str, factory: HandlerFactory) -> None:
        self._transport = transport
        self._host = host
        self._factory = factory
        self._port = 0
        self._server: asyncio.Server | None = None
        self._setups: set[asyncio.Task[None]] = set()
        self.address = ""
        self.closed = False

    def _channel(self) -> OobChannel:
        ch = OobChannel(self._transport._max_wire_message())
        ch.on_made = self._spawn
        self._transport._track(ch)
        return ch

    def _spawn(self, ch: OobChannel) -> None:
        if self.closed:
            ch.close()
            return
        task = asyncio.get_running_loop().create_task(self._transport._accept(self, ch))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        if _DIRECTORY.listeners.get((self._host, self._port)) is self:
            del _DIRECTORY.listeners[(self._host, self._port)]
        if self._server is not None:
            # links already made stay up; only the listening socket closes
            self._server.close()
        for task in list(self._setups):
            task.cancel()
        if self._setups:
            await asyncio.gather(*self._setups, return_exceptions=True)


class RdmaTransport(Transport):
    """msgr over RDMA verbs; see :mod:`msgr_rdma`."""

    schemes: ClassVar[tuple[str, ...]] = ("rdma",)
    distribution: ClassVar[str] = "msgr-rdma"
    config_section: ClassVar[str] = SECTION
    config_defaults: ClassVar[dict[str, Any]] = DEFAULTS
    test_addresses: ClassVar[dict[str, str]] = {"rdma": "rdma://127.0.0.1:0"}
    # the kit runs over the emulated verbs backend, chosen explicitly (never silently)
    test_settings: ClassVar[dict[str, dict[str, Any]]] = {"rdma": {"backend": "emulated"}}

    def __init__(self, scheme: str, options: TransportOptions) -> None:
        super().__init__(scheme, options)
        self.settings = RdmaSettings.from_mapping(options.settings)
        self._ctx: VerbsContext | None = None
        self.links: set[RdmaLink] = set()
        self._channels: set[OobChannel] = set()

    def _track(self, ch: OobChannel) -> None:
        self._channels.add(ch)
        ch.done.add_done_callback(lambda _f: self._channels.discard(ch))

    @property
    def _kind(self) -> int:
        return _KINDS[self.settings.backend]

    def _max_wire_message(self) -> int:
        # the largest emulated-wire message: an RDMA READ answer of a whole frame
        return self.options.max_frame_bytes + 4 * MAX_SEGMENTS + 64

    def _context(self) -> VerbsContext:
        if self._ctx is None:
            s = self.settings
            if s.backend == "emulated":
                self._ctx = EmuFabric.shared().open(s.device or "emu0", qp_error_after=s.emu_qp_error_after)
            elif s.backend == "emulated-ipc":
                # one emulated NIC per transport, with its own MR table
                self._ctx = EmuFabric().open(s.device or "emu-ipc0", qp_error_after=s.emu_qp_error_after)
            else:
                ctx = open_verbs_device(s.device, s.port, s.gid_index)
                watch = getattr(ctx, "watch", None)
                if watch is not None:
                    watch(asyncio.get_running_loop())
                self._ctx = ctx
        return self._ctx

    def _make_qp(self, ctx: VerbsContext) -> tuple[CompletionQueue, QueuePair, MemoryRegion]:
        """A CQ deep enough for every WR the protocol can have outstanding
        (receives + send slots + reads), a QP in INIT and its receives posted."""
        p = self.settings.link
        nrecv = p.recv_count + EXTRA_RECVS
        nsend = 2 * (p.recv_count + EXTRA_RECVS) + p.max_reads + 8
        cq = ctx.create_cq(nrecv + nsend)
        qp = recv_mr = None
        try:
            qp = ctx.create_qp(cq, max_send_wr=nsend, max_recv_wr=nrecv, max_inline=p.inline_threshold)
            qp.to_init()
            recv_mr = ctx.reg_mr(nrecv * p.buffer_size, Access.LOCAL_WRITE)
            for i in range(nrecv):
                qp.post_recv(1 << 32 | i, recv_mr, i * p.buffer_size, p.buffer_size)
        except BaseException:
            _release(cq, qp, recv_mr)
            raise
        return cq, qp, recv_mr

    def _info(self, qp: QueuePair) -> ConnInfo:
        p = self.settings.link
        return ConnInfo(self._kind, qp.endpoint(), p.recv_count, p.buffer_size)

    async def listen(self, address: str, handler_factory: HandlerFactory) -> Listener:
        host, port = parse_address(address, listen=True)
        self._context()  # fails clearly without a device
        listener = RdmaListener(self, host, handler_factory)
        if self.settings.backend == "emulated":
            listener._port = _DIRECTORY.bind(host, port, listener)
        else:
            server = await asyncio.get_running_loop().create_server(listener._channel, host, port)
            listener._server = server
            listener._port = int(server.sockets[0].getsockname()[1])
        listener.address = _fmt(host, listener._port)
        return listener

    async def connect(self, address: str, handler: LinkHandler) -> Link:
        host, port = parse_address(address, listen=False)
        ctx = self._context()
        if isinstance(ctx, EmuContext) and self.settings.backend == "emulated":
            return self._connect_in_process(ctx, address, host, handler)
        cq, qp, mr = self._make_qp(ctx)
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                ch, info = await dial(host, port, qp, self._info(qp), track=self._track)
        except BaseException:
            _release(cq, qp, mr)
            raise
        link = RdmaLink(
            asyncio.get_running_loop(),
            ctx,
            cq,
            qp,
            mr,
            self.settings.link,
            self.options,
            peer_credits=info.recv_count,
            peer_buffer_size=info.buffer_size,
            local_address=_fmt_peer(ch.transport.get_extra_info("sockname") if ch.transport else None),
            peer_address=address,
            on_done=self.links.discard,
        )
        self.links.add(link)
        link.start(handler)
        return link

    async def _accept(self, listener: RdmaListener, ch: OobChannel) -> None:
        """The listener's side of the exchange (see :mod:`msgr_rdma._oob`);
        a failed or refused setup only closes that connection."""
        cq = qp = mr = None
        info: ConnInfo | None = None
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                kind, body = await ch.recv()
                if kind != M_INFO:
                    raise ProtocolError(f"rdma connection setup: expected INFO, got message kind {kind}", peer=ch.peer)
                info = decode_info(body, ch.peer)
                if info.kind != self._kind:
                    reason = (
                        f"this listener runs the {self.settings.backend!r} backend, "
                        f"the peer {KIND_NAMES[info.kind]!r}"
                    )
                    ch.send(M_REFUSE, reason.encode())
                    raise ProtocolError(f"rdma connection setup refused: {reason}", peer=ch.peer)
                cq, qp, mr = self._make_qp(self._context())
                qp.attach(ch)
                qp.to_rtr(info.endpoint)
                qp.to_rts()
                ch.send(M_INFO, encode_info(self._info(qp)))
                kind, _body = await ch.recv()
                if kind != M_READY:
                    raise ProtocolError(f"rdma connection setup: expected READY, got message kind {kind}", peer=ch.peer)
        except (OSError, ProtocolError, VerbsError, ValueError) as exc:
            log.info("rdma connection setup from %s failed: %s", ch.peer or "?", exc)
            _release(cq, qp, mr)
            ch.close()
            return
        except BaseException:
            _release(cq, qp, mr)
            ch.close()
            raise
        if listener.closed or cq is None or qp is None or mr is None or info is None:
            _release(cq, qp, mr)
            ch.close()
            return
        link = RdmaLink(
            asyncio.get_running_loop(),
            self._context(),
            cq,
            qp,
            mr,
            self.settings.link,
            self.options,
            peer_credits=info.recv_count,
            peer_buffer_size=info.buffer_size,
            local_address=listener.address,
            peer_address=_fmt_peer(ch.transport.get_extra_info("peername") if ch.transport else None),
            on_done=self.links.discard,
        )
        self.links.add(link)
        link.start(listener._factory())

    def _connect_in_process(self, ctx: EmuContext, address: str, host: str, handler: LinkHandler) -> Link:
        c_cq, c_qp, c_mr = self._make_qp(ctx)
        cp = self.settings.link
        try:
            s_credits, s_buffer, listen_address = accept_emulated(
                address, c_qp.qp_num, cp.recv_count, cp.buffer_size, c_qp
            )
        except OSError:
            _release(c_cq, c_qp, c_mr)
            raise
        client = RdmaLink(
            asyncio.get_running_loop(),
            ctx,
            c_cq,
            c_qp,
            c_mr,
            cp,
            self.options,
            peer_credits=s_credits,
            peer_buffer_size=s_buffer,
            local_address=_fmt(host, 0),
            peer_address=listen_address,
            on_done=self.links.discard,
        )
        self.links.add(client)
        client.start(handler)
        return client

    async def aclose(self) -> None:
        """Abort the links still open (they cannot outlive the device
        context), wait for their setup connections to close, release the
        device."""
        for link in list(self.links):
            link.abort()
        waiting = [ch.done for ch in self._channels if not ch.done.done()]
        if waiting:
            await asyncio.wait(waiting, timeout=5)
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None


def _release(cq: CompletionQueue | None, qp: QueuePair | None, mr: MemoryRegion | None) -> None:
    """Undo a half-made connection (the QP's channel closes with it)."""
    if qp is not None:
        qp.destroy()
    if cq is not None:
        cq.close()
    if mr is not None:
        mr.dereg()


async def dial(
    host: str, port: int, qp: QueuePair, mine: ConnInfo, *, track: Callable[[OobChannel], None] | None = None
) -> tuple[OobChannel, ConnInfo]:
    """The connecting side of the exchange: ``qp`` (in INIT, receives
    posted) ends in RTS, connected to the listener's new QP; the caller
    bounds the time.  Also used by tests to connect a raw QP.

    :returns: the channel (now owned by ``qp``) and the listener's info.
    :raises ConnectionRefusedError: nothing listens, or the listener refused (its reason).
    :raises ConnectionResetError: the listener closed the connection during setup.
    :raises ProtocolError: the listener is not an msgr-rdma one (or another version).
    """
    ch = await open_channel(host, port)
    if track is not None:
        track(ch)
    try:
        qp.attach(ch)
        ch.send(M_INFO, encode_info(mine))
        kind, body = await ch.recv()
        if kind == M_REFUSE:
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"rdma://{host}:{port} refused: {body.decode(errors='replace')}"
            )
        if kind != M_INFO:
            raise ProtocolError(f"rdma connection setup: expected INFO, got message kind {kind}", peer=ch.peer)
        info = decode_info(body, ch.peer)
        if info.kind != mine.kind:
            raise ProtocolError(
                f"rdma connection setup: the listener answered with backend {KIND_NAMES[info.kind]!r}", peer=ch.peer
            )
        qp.to_rtr(info.endpoint)
        qp.to_rts()
        ch.send(M_READY)
    except BaseException:
        ch.close()
        raise
    return ch, info


def accept_emulated(
    address: str, qp_num: int, recv_count: int, buffer_size: int, qp: QueuePair
) -> tuple[int, int, str]:
    """The in-process emulated connection exchange, listener side: make the
    listener's QP for a connecting QP ``qp_num`` (which posted ``recv_count``
    + 3 receives of ``buffer_size`` bytes), connect both (``qp`` is the
    connecting QP, in INIT: it is moved to RTS) and start the listener's link.

    Also used by tests to connect a raw emulated QP.

    :returns: ``(the listener's credits, its buffer size, its address)``.
    :raises ConnectionRefusedError: nothing listens on ``address``.
    """
    host, port = parse_address(address, listen=False)
    listener = _DIRECTORY.listeners.get((host, port))
    if listener is None or listener.closed:
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"nothing listens on {address}")
    server_t = listener._transport
    server_ctx = server_t._context()
    s_cq, s_qp, s_mr = server_t._make_qp(server_ctx)
    s_qp.to_rtr(qp.endpoint())
    qp.to_rtr(s_qp.endpoint())
    qp.to_rts()
    s_qp.to_rts()
    sp = server_t.settings.link
    server = RdmaLink(
        asyncio.get_running_loop(),
        server_ctx,
        s_cq,
        s_qp,
        s_mr,
        sp,
        server_t.options,
        peer_credits=recv_count,
        peer_buffer_size=buffer_size,
        local_address=listener.address,
        peer_address=_fmt(host, 0),
        on_done=server_t.links.discard,
    )
    server_t.links.add(server)
    server.start(listener._factory())
    return sp.recv_count, sp.buffer_size, listener.address
