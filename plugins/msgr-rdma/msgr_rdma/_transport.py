"""The :class:`RdmaTransport` (scheme ``rdma``) and its ``[rdma]`` settings."""

from __future__ import annotations

import asyncio
import errno
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

from msgr_core.errors import ConfigError, UnsupportedAddress
from msgr_core.transport import HandlerFactory, Link, LinkHandler, Listener, Transport, TransportOptions, split_address

from ._link import EXTRA_RECVS, LinkParams, RdmaLink
from .emulation import EmuContext, EmuFabric
from .verbs import Access, CompletionQueue, MemoryRegion, QueuePair, VerbsContext, open_verbs_device

__all__ = ["DEFAULTS", "RdmaSettings", "RdmaTransport", "parse_address"]

SECTION = "rdma"
BACKENDS = ("verbs", "emulated")

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
                '"verbs" (an RDMA device through pyverbs) or "emulated" (the in-process test backend)',
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
        ):
            v = values[key]
            low = 0 if key in ("gid_index", "inline_threshold", "mr_cache_bytes") else 1
            if key == "buffer_size":
                low = _MIN_BUFFER
            if key == "recv_count":
                low = 3
            if not isinstance(v, int) or isinstance(v, bool) or v < low or v > 1 << 40:
                raise ConfigError(f"{SECTION}.{key}", v, f"an integer >= {low}")
        if values["recv_count"] > 0xFFFF:
            raise ConfigError(f"{SECTION}.recv_count", values["recv_count"], "at most 65535")
        params = LinkParams(
            buffer_size=values["buffer_size"],
            recv_count=values["recv_count"],
            inline_threshold=values["inline_threshold"],
            rendezvous_threshold=values["rendezvous_threshold"],
            max_reads=values["max_reads"],
            mr_cache_bytes=values["mr_cache_bytes"],
            poll_batch=values["poll_batch"],
        )
        return cls(backend, values["device"], values["port"], values["gid_index"], params)


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


class _EmuDirectory:
    """Out-of-band connection setup for the in-process emulation: listeners
    by (host, port), standing in for rdmacm's address resolution and
    connection exchange (QP numbers, receive credits, buffer sizes)."""

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
        self.address = ""
        self.closed = False

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            if _DIRECTORY.listeners.get((self._host, self._port)) is self:
                del _DIRECTORY.listeners[(self._host, self._port)]


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

    def _context(self) -> VerbsContext:
        if self._ctx is None:
            if self.settings.backend == "emulated":
                self._ctx = EmuFabric.shared().open(self.settings.device or "emu0")
            else:
                self._ctx = open_verbs_device(self.settings.device)
        return self._ctx

    async def listen(self, address: str, handler_factory: HandlerFactory) -> Listener:
        host, port = parse_address(address, listen=True)
        self._context()  # fails clearly without a device
        listener = RdmaListener(self, host, handler_factory)
        listener._port = _DIRECTORY.bind(host, port, listener)
        listener.address = _fmt(host, listener._port)
        return listener

    def _make_qp(self, ctx: VerbsContext) -> tuple[CompletionQueue, QueuePair, MemoryRegion]:
        """A CQ deep enough for every WR the protocol can have outstanding
        (receives + send slots + reads), a QP in INIT and its receives posted."""
        p = self.settings.link
        nrecv = p.recv_count + EXTRA_RECVS
        cq = ctx.create_cq(nrecv + 2 * (p.recv_count + EXTRA_RECVS) + p.max_reads + 8)
        qp = ctx.create_qp(cq, max_send_wr=2 * (p.recv_count + EXTRA_RECVS) + p.max_reads + 8, max_recv_wr=nrecv)
        qp.to_init()
        recv_mr = ctx.reg_mr(nrecv * p.buffer_size, Access.LOCAL_WRITE)
        for i in range(nrecv):
            qp.post_recv(1 << 32 | i, recv_mr, i * p.buffer_size, p.buffer_size)
        return cq, qp, recv_mr

    async def connect(self, address: str, handler: LinkHandler) -> Link:
        host, _port = parse_address(address, listen=False)
        ctx = self._context()
        if not isinstance(ctx, EmuContext):  # pragma: no cover - verbs data path not written
            raise NotImplementedError("msgr-rdma: connecting over pyverbs is not implemented")
        loop = asyncio.get_running_loop()
        c_cq, c_qp, c_mr = self._make_qp(ctx)
        cp = self.settings.link
        try:
            s_credits, s_buffer, listen_address = accept_emulated(
                address, c_qp.qp_num, cp.recv_count, cp.buffer_size, c_qp
            )
        except OSError:
            c_qp.destroy()
            c_cq.close()
            c_mr.dereg()
            raise
        client = RdmaLink(
            loop,
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
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None


def accept_emulated(
    address: str, qp_num: int, recv_count: int, buffer_size: int, qp: QueuePair
) -> tuple[int, int, str]:
    """The emulated connection exchange, listener side: make the listener's
    QP for a connecting QP ``qp_num`` (which posted ``recv_count`` + 3
    receives of ``buffer_size`` bytes), connect both (``qp`` is the
    connecting QP, in INIT: it is moved to RTS) and start the listener's link.

    What rdmacm's connect request / private data would carry; also used by
    tests to connect a raw emulated QP.

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
    s_qp.to_rtr(qp_num)
    qp.to_rtr(s_qp.qp_num)
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
