"""The :class:`Messenger`: what applications use.

::

    async with Messenger.from_config("node.toml") as ms:
        ms.register_handler("echo", lambda msg: msg.payload)
        reply = await ms.send_message("echo", "tcp://10.0.0.5:6800", b"hi", timeout=5)

A messenger has an identity (entity name, type, and an incarnation that
changes every start), listens on any number of transports at once, keeps one
session (:class:`~msgr_core.connection.Connection`) per peer, and routes
incoming messages to verb handlers through plain dicts built at start-up:
no pluggy call and no task creation per message (async handlers excepted:
they need a task to run in).

Handlers receive a :class:`~msgr_core.message.Message`.  Request handlers
return the reply (a value, or :class:`~msgr_core.message.Reply` to add
attachments), or raise: the caller gets
:class:`~msgr_core.errors.RemoteError` with the exception's type and text.
Handlers may be plain functions (fastest) or coroutine functions.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from . import message as m
from .auth import NONCE_BYTES, Authenticator, HandshakeAuth, check, proof
from .config import Config, load_config
from .connection import ACCEPTING, AUTH_FAILED, OPEN, RACE, Connection, _Port, _Rejected, random_seeded
from .dispatcher import Dispatcher, DispatcherPlugin
from .errors import (
    AuthenticationFailed,
    FrameTooLarge,
    MessengerError,
    MessengerStopped,
    MsgrError,
    PeerUnreachable,
    ProtocolError,
)
from .message import Message, Priority
from .policy import get_policy
from .registry import EXTENSION_GROUP, TRANSPORT_GROUP, PluginSet, TransportRegistry
from .transport import Buffer, Link, Listener, Transport, TransportOptions, split_address

__all__ = ["Messenger"]

log = logging.getLogger("msgr.messenger")

Handler = Callable[[Message], Any]

_EVENT_HOOKS = (
    "msgr_handle_connect",
    "msgr_handle_accept",
    "msgr_handle_reset",
    "msgr_handle_remote_reset",
    "msgr_handle_refused",
    "msgr_dispatch",
    "msgr_dispatch_oob",
    "msgr_undeliverable",
)

# The client-side counterpart of each policy, for sessions we dial.
_CLIENT_SIDE = {"stateless_server": "lossy_client", "stateful_server": "lossless_client"}
# The accepting-side policy for each mode a peer may ask for.
_SERVER_SIDE = {"lossy": "stateless_server", "lossless": "stateful_server", "peer": "lossless_peer"}
# Schemes whose addresses are never reachable from another host.
_LOCAL_SCHEMES = frozenset({"loop", "unix", "zmq+ipc", "ipc", "inproc"})


def _exposed(address: str) -> bool:
    """Whether a listen address may be reachable from other hosts."""
    try:
        scheme, host, _port, _path = split_address(address)
    except MsgrError:
        return False
    if scheme in _LOCAL_SCHEMES or not host or host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: assume it is reachable


class Messenger:
    """A node's messenger.  Build it with :meth:`from_config`.

    :ivar name: this entity's name (``messenger.name``).
    :ivar type: this entity's type (``messenger.type``).
    :ivar incarnation: changes every :meth:`start` (peers detect restarts by it).
    :ivar config: the checked :class:`~msgr_core.config.Config`.
    :ivar extensions: per-messenger state of enabled extensions, by name.
    """

    def __init__(self, config: Config, *, plugins: PluginSet | None = None) -> None:
        self.config = config
        ms = config["messenger"]
        self.name: str = ms["name"]
        self.type: str = ms["type"]
        self.incarnation = 0
        self.plugins = plugins or PluginSet()
        self.plugins.load(TRANSPORT_GROUP, config.transports)
        self.plugins.load(EXTENSION_GROUP, ms["extensions"])
        self.transports = TransportRegistry(self.plugins)
        for scheme in config.transports:
            cls = self.transports.get(scheme)
            if cls.config_section and not config.has_section(cls.config_section):
                config.declare(cls.config_section, cls.config_defaults, owner=cls.distribution or scheme)
        for sections in self.plugins.hook.msgr_config_sections():
            for section, defaults in sections.items():
                config.declare(section, defaults, owner="extension")
        config.check_unknown_sections()
        self.extensions: dict[str, Any] = {}
        self._handlers: dict[str, Handler] = {}
        self._oneway_handlers: dict[str, Handler] = {}
        self._transport_objs: dict[str, Transport] = {}
        self._listeners: list[Listener] = []
        self._by_addr: dict[str, Connection] = {}
        self._by_name: dict[str, Connection] = {}
        self._accepted: set[Connection] = set()
        self._known_addrs: dict[str, tuple[str, ...]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self._errors: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._authenticated = 0
        #: ``[auth]`` resolved (keys, whether authentication is required)
        self.auth = Authenticator.from_config(config["auth"], source=config.source)
        self._closed_stats = {"msgs_out": 0, "bytes_out": 0, "msgs_in": 0, "bytes_in": 0, "dropped": 0,
                              "handler_errors": 0, "unhandled": 0}
        self._resets = 0
        self._injected = 0
        self._undelivered = 0
        self._view: frozenset[str] | None = None
        self._known_types: dict[str, str] = {}
        self._oob_handlers: dict[str, Callable[[Connection, str, Any], None]] = {}
        self._oob_everywhere: dict[str, tuple[Callable[[Connection], Any], float]] = {}
        self._accepting = False
        self._keepalive: asyncio.TimerHandle | None = None
        self.inject_rng = random_seeded(config["inject"]["seed"])
        self._refresh_hooks()
        # Built-in verbs every node answers (``msgr ping``, ``msgr status``).
        self._handlers["msgr.ping"] = lambda msg: msg.payload
        self._handlers["msgr.status"] = lambda msg: self._status()

    @classmethod
    def from_config(cls, source: str | os.PathLike[str] | Mapping[str, Any] | Config) -> Messenger:
        """A messenger from a TOML file, a dict, or a :class:`Config`.

        :raises ConfigError: the config is wrong (names file, key, value).
        :raises PluginNotInstalled: a selected transport/extension is missing.
        """
        return cls(load_config(source))

    # -- lifecycle -----------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise MessengerStopped(f"messenger {self.name} is not started")
        return self._loop

    @property
    def running(self) -> bool:
        return self._running

    @property
    def addresses(self) -> list[str]:
        """The addresses actually bound (port 0 resolved), in listen order."""
        return [lst.address for lst in self._listeners]

    @property
    def hook(self) -> Any:
        """The pluggy hook relay (``ms.hook.msgr_peer_failed(...)``)."""
        return self.plugins.hook

    async def start(self) -> None:
        """Listen on ``messenger.listen`` and call ``msgr_messenger_started``.

        :raises OSError: an address cannot be bound (nothing stays bound).
        """
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self.incarnation = time.time_ns()
        self._running = True
        self._accepting = True
        self._keepalive = self._loop.call_later(self.config["session"]["keepalive_interval"],
                                                self._keepalive_tick)
        try:
            for addr in self.config["messenger"]["listen"]:
                scheme = split_address(addr)[0]
                transport = self._transport(scheme)
                listener = await transport.listen(addr, self._new_incoming)
                self._listeners.append(listener)
                log.info("%s listening on %s", self.name, listener.address)
                if not self.auth.require and _exposed(listener.address):
                    log.warning("%s listens on %s without requiring authentication: anyone who can reach it "
                                "can call its verbs (configure [auth]; see docs/security.md)",
                                self.name, listener.address)
            await self._call_lifecycle("msgr_messenger_started")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Graceful stop: tell extensions, flush every session, say goodbye,
        close links and listeners.  Bounded by ``limits.stop_timeout``."""
        if not self._running:
            return
        timeout = self.config["limits"]["stop_timeout"]
        try:
            await asyncio.wait_for(self._call_lifecycle("msgr_messenger_stopping", reverse=True), timeout)
        except TimeoutError:
            log.warning("extensions did not finish stopping within %g s", timeout)
        except Exception:
            log.exception("an extension failed while stopping")
        await self._stop_accepting()
        conns = self.connections
        if conns:
            await asyncio.gather(*(c._close_task(timeout, "messenger stopped") for c in conns),
                                 return_exceptions=True)
        for conn in list(self._accepted):
            conn._reset("messenger stopped", notify=False)
        await self._release()

    async def abort(self) -> None:
        """Stop at once, as if the process died: links are aborted with no
        flush and no goodbye, so peers see a link failure, not a stop.
        (For tests and fault drills; :meth:`stop` is the graceful way.)"""
        if not self._running:
            return
        await self._stop_accepting()
        for conn in self.connections + list(self._accepted):
            conn._stopping = True
            conn._reset("messenger aborted", notify=False)
        await self._release()

    async def _stop_accepting(self) -> None:
        self._accepting = False
        for lst in self._listeners:
            await lst.aclose()
        self._listeners.clear()

    async def _release(self) -> None:
        """How every stop ends: timers, tasks and transports go."""
        self._running = False
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for t in self._transport_objs.values():
            await t.aclose()
        self._transport_objs.clear()

    async def __aenter__(self) -> Messenger:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handlers ----------------------------------------------------------

    def register_handler(self, verb: str, fn: Handler) -> None:
        """Handle requests for ``verb``: ``fn(msg)`` returns (or resolves to)
        the reply.  Replaces an earlier handler for the same verb."""
        self._handlers[verb] = fn

    def register_handler_oneway(self, verb: str, fn: Handler) -> None:
        """Handle oneway messages for ``verb``; ``fn(msg)``'s result is ignored."""
        self._oneway_handlers[verb] = fn

    def unregister_handler(self, verb: str) -> None:
        """Remove ``verb``'s handlers (request and oneway)."""
        self._handlers.pop(verb, None)
        self._oneway_handlers.pop(verb, None)

    def add_dispatcher(self, dispatcher: Dispatcher) -> None:
        """Receive connection events on a :class:`~msgr_core.dispatcher.Dispatcher`."""
        self.plugins.register(DispatcherPlugin(dispatcher), name=f"dispatcher-{id(dispatcher):x}")
        self._refresh_hooks()

    def register_oob_handler(self, op: str, fn: Callable[[Connection, str, Any], None]) -> None:
        """Handle OOB payloads ``op`` with ``fn(conn, op, payload)`` (a table
        lookup, no hook call); ops without a handler go to ``msgr_dispatch_oob``."""
        self._oob_handlers[op] = fn

    def register_oob_message(self, op: str, callback: Callable[[Connection], Any], interval: float) -> None:
        """Send ``callback(conn)`` as OOB payload ``op`` every ``interval`` on
        every session, present and future (see
        :meth:`Connection.register_oob_message`)."""
        self._oob_everywhere[op] = (callback, interval)
        for conn in self.connections:
            if conn.is_open:
                conn.register_oob_message(op, partial(callback, conn), interval)

    # -- membership (Geode) ----------------------------------------------------

    @property
    def view(self) -> frozenset[str] | None:
        """The installed view (entity names), or ``None`` if none was installed."""
        return self._view

    def install_view(self, members: Iterable[str]) -> None:
        """Install a new membership view (entity names).

        Sessions with peers that were members and are no longer are closed:
        their queued and unacknowledged messages are reported undeliverable
        (``msgr_undeliverable`` / ``Dispatcher.handle_undeliverable``) and
        their pending requests fail with ``ConnectionReset``.  Lossless
        sessions stop retrying such peers.  ``msgr_view_changed`` fires.
        """
        new = frozenset(members)
        old = self._view or frozenset()
        self._view = new
        for name in old - new:
            conn = self._by_name.get(name)
            if conn is not None and not conn.is_closed:
                conn._reset(f"{name} left the view", notify=True)
        self.plugins.hook.msgr_view_changed(messenger=self, members=new)

    def send(self, verb: str, payload: Any, recipients: Iterable[str], *,
             attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL) -> set[str]:
        """Send one oneway message to several peers (names or addresses).

        :returns: the recipients it could not be queued for: not in the
            installed view, no known address, session closed, or queue full
            (``Backpressure``).  One slow peer never holds up the others.
        """
        failed: set[str] = set()
        view = self._view
        for peer in recipients:
            if view is not None and "://" not in peer and peer not in view:
                failed.add(peer)
                continue
            try:
                self.get_connection(peer).send_nowait(verb, payload, attachments=attachments, priority=priority)
            except (MessengerError, FrameTooLarge):
                failed.add(peer)
        return failed

    # -- sending -------------------------------------------------------------

    def add_known_address(self, name: str, addrs: Iterable[str]) -> None:
        """Learn where entity ``name`` listens (from config, gossip, ...), so
        ``get_connection(name)`` can dial it.  Addresses learned from a
        handshake with ``name`` later replace these; an empty ``addrs``
        forgets them."""
        addrs = tuple(addrs)
        if addrs:
            self._known_addrs[name] = addrs
        else:
            self._known_addrs.pop(name, None)


    def get_connection(self, peer: str, *, policy: str | None = None) -> Connection:
        """The session with ``peer``, an address (``tcp://host:port``) or an
        entity name whose addresses are known; created (and dialled in the
        background) if none is open.  Messages sent meanwhile are queued.

        :param policy: the policy for a new session (default: ``[policy]``
            for the peer's type when known, else ``policy.default``; a server
            policy is used as its client counterpart).
        :raises PeerUnreachable: ``peer`` is a name with no known address,
            outside the installed view, or no address it offers has a usable
            transport.
        :raises MessengerStopped: the messenger is not running.
        """
        if not self._running:
            raise MessengerStopped(f"messenger {self.name} is not running")
        by_address = "://" in peer
        conn = self._by_addr.get(peer) if by_address else self._by_name.get(peer)
        if conn is not None and not conn.is_closed:
            return conn
        if by_address:
            address = peer
            for c in self._by_name.values():
                if peer in c.peer_addrs and not c.is_closed:
                    return c
            peer_type = ""
        else:
            if self._view is not None and peer not in self._view:
                raise PeerUnreachable(peer, "not in the installed view")
            addrs = self._known_addrs.get(peer)
            if not addrs:
                raise PeerUnreachable(peer, "no session and no known address for this name")
            # A session still dialling one of the peer's addresses is known
            # only by address until its handshake names the peer: reuse it.
            # A second session would reorder what the two carry, and the
            # peer would reset the first one ("started a new session") with
            # whatever it still had queued.
            conn = self._dialling(peer, addrs)
            if conn is not None:
                return conn
            address = self._choose_address(peer, addrs)
            peer_type = self._known_types.get(peer, "")
        pol = get_policy(_CLIENT_SIDE.get(p := policy or self.config.policy_for(peer_type), p))
        self._transport(split_address(address)[0])  # bad address / missing plugin: raise now
        conn = Connection(self, outgoing=True, address=address, policy=pol)
        self._by_addr[address] = conn
        if not by_address:
            conn.peer_name = peer
        conn._attempt = self._spawn(conn._dial(address))
        return conn

    def _choose_address(self, peer: str, addrs: Sequence[str]) -> str:
        for scheme in self.config.transports:
            for a in addrs:
                if a.startswith(scheme + "://"):
                    return a
        for a in addrs:
            try:
                self.transports.get(split_address(a)[0])
                return a
            except MsgrError:
                continue
        raise PeerUnreachable(peer, f"no usable transport for its addresses {', '.join(addrs)}")

    def _dial_address(self, conn: Connection) -> str:
        """Where a session without a link should dial ("" = nowhere)."""
        if conn.outgoing and conn.address:
            return conn.address
        if conn.peer_addrs:
            try:
                return self._choose_address(conn._who(), conn.peer_addrs)
            except PeerUnreachable:
                return ""
        return ""

    async def _connect(self, address: str, port: Any) -> Link:
        return await self._transport(split_address(address)[0]).connect(address, port)

    async def send_message(self, verb: str, peer: str, payload: Any = b"", *, timeout: float | None = None,
                           attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL) -> Any:
        """Call ``verb`` on ``peer`` and return the reply's payload.

        :raises RequestTimeout, RemoteError, UnknownVerb, ConnectionReset, PeerUnreachable:
            see :meth:`Connection.request <msgr_core.connection.Connection.request>`.
        """
        reply = await self.get_connection(peer).request(
            verb, payload, timeout=timeout, attachments=attachments, priority=priority)
        return reply.payload

    async def request(self, verb: str, peer: str, payload: Any = b"", *, timeout: float | None = None,
                      attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL) -> Message:
        """Like :meth:`send_message`, returning the whole reply :class:`Message`."""
        return await self.get_connection(peer).request(
            verb, payload, timeout=timeout, attachments=attachments, priority=priority)

    async def send_message_oneway(self, verb: str, peer: str, payload: Any = b"", *,
                                  attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL) -> None:
        """Send a oneway message to ``peer``; waits only while its queue is full."""
        await self.get_connection(peer).send(verb, payload, attachments=attachments, priority=priority)

    # -- introspection ---------------------------------------------------------

    @property
    def connections(self) -> list[Connection]:
        """Every session not yet closed (outgoing, then accepted)."""
        seen: dict[int, Connection] = {}
        for c in [*self._by_addr.values(), *self._by_name.values()]:
            if not c.is_closed:
                seen[id(c)] = c
        return list(seen.values())

    @property
    def stats(self) -> dict[str, Any]:
        """Messenger-wide counters: totals over every session (closed ones
        included), open sessions, queue depths, resets, fault injections and
        errors by type, incoming links rejected by reason (``rejected``:
        ``auth_failed``, ``handshake_timeout``, ``protocol_error``,
        ``frame_too_large``, ``closed_in_handshake``, ``max_pending``,
        ``max_sessions``, ``refused``) and links authenticated."""
        totals = dict(self._closed_stats)
        queued = 0
        conns = self.connections
        for c in conns:
            s = c.stats
            for k in totals:
                totals[k] += s[k]
            queued += s["queued_bytes"]
        return {
            **totals,
            "sessions": len(conns),
            "queued_bytes": queued,
            "resets": self._resets,
            "injected_failures": self._injected,
            "undeliverable": self._undelivered,
            "errors": dict(self._errors),
            "rejected": dict(self._rejected),
            "authenticated": self._authenticated,
        }

    def _status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "incarnation": self.incarnation,
            "addresses": self.addresses,
            "view": sorted(self._view) if self._view is not None else None,
            "stats": self.stats,
            "sessions": [c.stats for c in self.connections],
        }

    # -- internals: transports -------------------------------------------------

    def _transport(self, scheme: str) -> Transport:
        t = self._transport_objs.get(scheme)
        if t is None:
            cls = self.transports.get(scheme)
            lim = self.config["limits"]
            settings = dict(self.config.get(cls.config_section)) if cls.config_section else {}
            if cls.config_section and not settings:
                settings = dict(cls.config_defaults)
            opts = TransportOptions(
                max_frame_bytes=lim["max_frame_bytes"] + lim["max_header_bytes"],
                high_watermark=lim["high_watermark"],
                low_watermark=lim["low_watermark"],
                connect_timeout=lim["connect_timeout"],
                settings=settings,
            )
            t = self._transport_objs[scheme] = cls(scheme, opts)
        return t

    def _new_incoming(self) -> _Port | _Rejected:
        if len(self._accepted) >= self.config["limits"]["max_pending"]:
            # links not past their handshake are bounded: refuse before reading anything
            self._count_rejected("max_pending")
            log.warning("%s: %d links still in their handshake (limits.max_pending): closing a new one",
                        self.name, len(self._accepted))
            return _Rejected()
        conn = Connection(self, outgoing=False)
        self._accepted.add(conn)
        return _Port(conn, outgoing=False)

    # -- internals: handshake -----------------------------------------------------

    def _hello(self, conn: Connection) -> dict[str, Any]:
        policy = conn.policy or get_policy(self.config.policy_for(""))
        return {
            "v": m.PROTOCOL_VERSION,
            "name": self.name,
            "type": self.type,
            "incarnation": self.incarnation,
            "features": [],
            "policy": policy.name,
            "mode": policy.mode,
            "addrs": self.addresses,
            "sid": conn.sid,
            "peer_sid": conn.peer_sid,
            "peer_inc": conn.peer_incarnation,
            "in_seq": conn._in_seq,
        }

    def _send_hello(self, conn: Connection, port: _Port) -> None:
        hello = self._hello(conn)
        key = self.auth.key_for(self.name, self.type)
        if key is not None:
            st = port.auth = HandshakeAuth(key, self.auth.new_nonce())
            hello["auth"] = st.nonce
        conn._send_control(m.HELLO, hello, link=port.link)

    @staticmethod
    def _check_hello(hello: Any) -> str:
        """An error text if ``hello`` is malformed, else ``""``."""
        if not isinstance(hello, dict):
            return "handshake payload is not a map"
        for key, typ in (("v", int), ("name", str), ("type", str), ("incarnation", int), ("mode", str),
                         ("policy", str), ("addrs", list), ("sid", int), ("peer_sid", int), ("in_seq", int)):
            if not isinstance(hello.get(key), typ):
                return f"handshake field {key!r} missing or not {typ.__name__}"
        if len(hello["addrs"]) > 64 or not all(isinstance(a, str) and len(a) <= 1024 for a in hello["addrs"]):
            return "handshake field 'addrs' not a list of at most 64 addresses"
        if not hello["name"] or len(hello["name"]) > 256:
            return "handshake field 'name' empty or over 256 characters"
        if hello["in_seq"] < 0:
            return "handshake field 'in_seq' negative"
        return ""

    def _accept(self, tmp: Connection, port: _Port, hello: Any) -> None:
        """A HELLO arrived on an incoming link: refuse, start a session, or
        resume the one we have with that peer."""
        problem = self._check_hello(hello)
        if problem:
            tmp._protocol_error(port, ProtocolError(problem, peer=tmp.address))
            return
        if hello["v"] != m.PROTOCOL_VERSION:
            tmp._refuse(port, f"protocol version {hello['v']} not supported (this peer speaks {m.PROTOCOL_VERSION})")
            return
        auth = self.auth
        st = port.auth
        if st is not None:
            if not st.done:
                tmp._protocol_error(port, ProtocolError("HELLO repeated during authentication", peer=tmp.address))
                return
            if (hello["name"], hello["type"]) != (st.peer_name, st.peer_type):
                self._auth_failed(tmp, port, hello, "a new HELLO on its authenticated link names another entity")
                return
        elif auth.enabled:
            key = auth.key_for(hello["name"], hello["type"])
            cnonce = hello.get("auth")
            if key is not None and type(cnonce) is bytes and len(cnonce) == NONCE_BYTES:
                # challenge: prove ourselves first, then wait for its proof
                st = port.auth = HandshakeAuth(key, auth.new_nonce())
                st.hello = hello
                st.peer_name, st.peer_type = hello["name"], hello["type"]
                fields = (cnonce, st.nonce, hello["name"], hello["type"], self.name)
                st.expected = proof(key, b"client", *fields)
                tmp._send_control(m.AUTH, {"nonce": st.nonce, "name": self.name,
                                           "proof": proof(key, b"server", *fields)}, link=port.link)
                return
            if auth.require:
                self._auth_failed(tmp, port, hello, "no key for it in the keyring" if key is None
                                  else "it did not offer to authenticate")
                return
        self._admit(tmp, port, hello)

    def _auth_proof(self, tmp: Connection, port: _Port, payload: Any) -> None:
        """The dialler's AUTH (its proof) arrived on an incoming link."""
        st = port.auth
        if st is None or st.done or st.hello is None:
            tmp._protocol_error(port, ProtocolError("unexpected AUTH message", peer=tmp.address))
            return
        hello, st.hello = st.hello, None
        if not check(st.expected, payload.get("proof") if isinstance(payload, dict) else None):
            self._auth_failed(tmp, port, hello, "wrong proof (wrong key, or a replayed or reflected proof)")
            return
        st.done = True
        self._authenticated += 1
        log.debug("%s authenticated %s (%s)", self.name, hello["name"], tmp.address)
        self._admit(tmp, port, hello)

    def _auth_failed(self, tmp: Connection, port: _Port, hello: dict[str, Any], detail: str) -> None:
        """Refuse a link that failed authentication: the peer is told only
        ``authentication failed``; we log and count the details."""
        address = (port.link.peer_address if port.link else "") or tmp.address or "unknown address"
        log.warning("%s: authentication failed for %s claiming to be %r (type %r): %s",
                    self.name, address, str(hello.get("name"))[:256], str(hello.get("type"))[:256], detail)
        self._count_error("AuthenticationFailed")
        if tmp.state == ACCEPTING:
            tmp._reject("auth_failed")
            tmp._refuse(port, AUTH_FAILED, quiet=True)
        else:  # a new HELLO on an open session's link
            self._count_rejected("auth_failed")
            tmp._send_control(m.REFUSE, AUTH_FAILED, link=port.link)
            if port.link is not None:
                port.link.close()

    def _auth_challenge(self, conn: Connection, port: _Port, payload: Any) -> None:
        """The acceptor's AUTH (its nonce and proof) arrived on our link."""
        st = port.auth
        if st is None or st.done:
            self._dial_auth_failed(conn, port, "the peer sent an unexpected AUTH message")
            return
        snonce = payload.get("nonce") if isinstance(payload, dict) else None
        sname = payload.get("name") if isinstance(payload, dict) else None
        if type(snonce) is not bytes or len(snonce) != NONCE_BYTES or type(sname) is not str or not sname:
            self._dial_auth_failed(conn, port, "malformed AUTH message from the peer")
            return
        fields = (st.nonce, snonce, self.name, self.type, sname)
        if not check(proof(st.key, b"server", *fields), payload.get("proof")):
            self._dial_auth_failed(conn, port, "the peer did not prove it holds the key")
            return
        st.done = True
        st.peer_name = sname
        conn._send_control(m.AUTH, {"proof": proof(st.key, b"client", *fields)}, link=port.link)

    def _check_peer_auth(self, port: _Port, hello: Any) -> str:
        """Before accepting a HELLO_OK: why the acceptor is not
        authenticated enough, or ``""``."""
        st = port.auth
        if st is not None and st.done:
            name = hello.get("name") if isinstance(hello, dict) else None
            if name != st.peer_name:
                return "the peer's HELLO_OK names another entity than the one that authenticated"
            return ""
        if self.auth.require:
            return "the peer did not authenticate itself (auth.require is set)"
        return ""

    def _dial_auth_failed(self, conn: Connection, port: _Port, detail: str) -> None:
        """Our handshake's authentication failed: the dial fails (no retry)."""
        done = port.done
        if done is not None and not done.done():
            done.set_exception(AuthenticationFailed(detail, peer=conn.address))
            done.exception()
        port.orphan()

    def _admit(self, tmp: Connection, port: _Port, hello: dict[str, Any]) -> None:
        """The rest of accepting a HELLO, once its link is authenticated
        (or authentication is not used for it)."""
        if not self._accepting:
            tmp._refuse(port, "messenger stopping")
            return
        name = hello["name"]
        explicit = self.config.explicit_policy(hello["type"])
        policy = get_policy(explicit or self.config.policy_for(hello["type"]))
        if policy.mode != hello["mode"] and not explicit and hello["mode"] in _SERVER_SIDE:
            # Only the default applies to this peer type: serve the peer in
            # the mode it asked for.  A policy configured for the type is kept.
            policy = get_policy(_SERVER_SIDE[hello["mode"]])
        if policy.mode != hello["mode"]:
            tmp._refuse(port, f"policy mismatch: {self.name} uses {policy.name} for peers of type "
                        f"{hello['type']!r}, {name} asked for {hello['policy']}")
            return
        existing = self._by_name.get(name)
        if (existing is None or existing.is_closed) and tmp.state == ACCEPTING \
                and len(self.connections) >= self.config["limits"]["max_sessions"]:
            tmp._reject("max_sessions")
            tmp._refuse(port, "too many sessions (limits.max_sessions)")
            return
        self._accepted.discard(tmp)
        session = self._by_name.get(name) or self._dialling(name, hello["addrs"])
        if session is not None and (session.is_closed or session._lossless != (not policy.lossy)):
            session = None
        remote_reset = False
        if policy.lossy:
            if session is not None and not session.outgoing:
                # the peer dialled again: its old lossy session is gone
                session._reset("replaced by a new session from the same peer", notify=True)
            remote_reset = bool(session and session.peer_incarnation != hello["incarnation"])
            session = None
        elif session is not None:
            ours = session._attempt is not None or (
                session.state == OPEN and session._port is not None and session._port.outgoing)
            if ours and policy.mode == "peer" and self.name < name:
                # connection race: the link dialled by the smaller name wins
                tmp._refuse(port, f"{RACE} {self.name} keeps the link it dialled", quiet=True)
                tmp._discard()
                return
            if session._attempt is not None:
                session._attempt.cancel()
                session._attempt = None
            if session.peer_incarnation and hello["incarnation"] != session.peer_incarnation:
                session._reset(f"{name} restarted", notify=False)
                session, remote_reset = None, True
            elif session.peer_sid and hello["sid"] != session.peer_sid:
                session._reset(f"{name} started a new session", notify=True)
                session = None
        # first link of this session: a new one, or our own dial's session
        # that the peer's link reached first (first contact, both dialling)
        first = session is None or session.links == 0
        if session is None:
            session = tmp
            session._set_policy(policy)
        else:
            tmp._discard()
        peer_in_seq = hello["in_seq"] if hello["peer_sid"] == session.sid else 0
        ok = self._hello(session)
        ok["peer_sid"] = hello["sid"]
        ok["peer_inc"] = hello["incarnation"]
        session._send_control(m.HELLO_OK, ok, link=port.link)
        session._adopt(port, hello, peer_in_seq)
        self._learn(session)
        if remote_reset:
            self._fire("msgr_handle_remote_reset", conn=session)
        if first:
            self._attach_oob(session)
            self._fire("msgr_handle_connect" if session.outgoing else "msgr_handle_accept", conn=session)

    def _dialling(self, name: str, addrs: Sequence[str]) -> Connection | None:
        """Our own session still dialling ``name`` at one of ``addrs`` (its
        handshake has not named the peer yet): for a peer that has just
        dialled us (first contact, both at once) and for
        :meth:`get_connection` by name.  Without it there would be two
        sessions, and the peer would reset one of them with what it had
        queued."""
        for addr in addrs:
            conn = self._by_addr.get(addr)
            if conn is not None and not conn.is_closed and conn.outgoing and conn.peer_name in ("", name):
                return conn
        return None

    def _connected(self, conn: Connection, port: _Port, hello: Any) -> None:
        """Our HELLO was answered with HELLO_OK on ``port``."""
        problem = self._check_hello(hello)
        if problem:
            conn._protocol_error(port, ProtocolError(problem, peer=conn.address))
            port.orphan()
            conn._dial_failed(conn.address, PeerUnreachable(conn._who(), problem))
            return
        if conn.is_closed:
            port.orphan()
            return
        session = conn
        remote_reset = False
        if conn.peer_incarnation and hello["incarnation"] != conn.peer_incarnation:
            session = self._successor(conn)
            conn._reset(f"{hello['name']} restarted", notify=False)
            remote_reset = True
        elif conn.peer_sid and hello["sid"] != conn.peer_sid:
            session = self._successor(conn)
            conn._reset(f"{hello['name']} started a new session", notify=True)
        first = session.links == 0
        peer_in_seq = hello["in_seq"] if hello["peer_sid"] == session.sid else 0
        session._adopt(port, hello, peer_in_seq)
        self._learn(session)
        if remote_reset:
            self._fire("msgr_handle_remote_reset", conn=session)
        if first:
            self._attach_oob(session)
            self._fire("msgr_handle_connect", conn=session)

    def _successor(self, old: Connection) -> Connection:
        """A fresh session replacing ``old`` (the peer restarted or reset)."""
        new = Connection(self, outgoing=True, address=old.address, policy=old.policy)
        if old.address:
            self._by_addr[old.address] = new
        return new

    def _refused(self, conn: Connection, reason: str) -> None:
        log.warning("%s refused our connection: %s", conn.address, reason)
        self._fire("msgr_handle_refused", conn=conn, reason=reason)

    def _learn(self, conn: Connection) -> None:
        if (conn.peer_addrs and conn.peer_addrs != (conn.address,)) or conn.outgoing:
            self._known_addrs[conn.peer_name] = conn.peer_addrs
        self._known_types[conn.peer_name] = conn.peer_type
        current = self._by_name.get(conn.peer_name)
        if conn._lossless or current is None or current.is_closed or conn.outgoing or not current.outgoing:
            self._by_name[conn.peer_name] = conn
        if conn.outgoing and conn.address:
            self._by_addr[conn.address] = conn

    def _attach_oob(self, conn: Connection) -> None:
        for op, (callback, interval) in self._oob_everywhere.items():
            conn.register_oob_message(op, partial(callback, conn), interval)

    def _forget(self, conn: Connection) -> None:
        if self._by_addr.get(conn.address) is conn:
            del self._by_addr[conn.address]
        if conn.peer_name and self._by_name.get(conn.peer_name) is conn:
            del self._by_name[conn.peer_name]
        self._accepted.discard(conn)
        if conn.peer_name:
            self._resets += 1
        s = conn.stats
        for k in self._closed_stats:
            self._closed_stats[k] += s[k]
        # further use of the closed object must not count twice
        conn.msgs_out = conn.bytes_out = conn.msgs_in = conn.bytes_in = 0
        conn.dropped = conn.handler_errors = conn.unhandled = 0

    def _report_undeliverable(self, conn: Connection, messages: list[tuple[str, Any]], reason: str) -> None:
        self._undelivered += len(messages)
        if self._has.get("msgr_undeliverable"):
            self._fire("msgr_undeliverable", conn=conn, messages=messages, reason=reason)
        else:
            log.warning("%d message(s) to %s undeliverable: %s", len(messages), conn._who(), reason)

    # -- internals: liveness --------------------------------------------------------

    def _keepalive_tick(self) -> None:
        """Every ``session.keepalive_interval``: ping idle links, and abort a
        link that has been silent for ``session.keepalive_timeout``."""
        ses = self.config["session"]
        interval, timeout = ses["keepalive_interval"], ses["keepalive_timeout"]
        for conn in self.connections:
            if conn.state != "open" or conn._port is None:
                continue
            if conn._rx != conn._rx_mark:
                conn._rx_mark = conn._rx
                conn._idle_ticks = 0
                continue
            conn._idle_ticks += 1
            if conn._idle_ticks * interval >= timeout:
                log.warning("no traffic from %s for %g s (session.keepalive_timeout): dropping the link",
                            conn._who(), timeout)
                self._count_error("KeepaliveTimeout")
                if conn._port.link is not None:
                    conn._port.link.abort()
            else:
                conn._send_control(m.KEEPALIVE)
        if self._running:
            self._keepalive = self.loop.call_later(interval, self._keepalive_tick)

    # -- internals: hooks and tasks -------------------------------------------------

    def _refresh_hooks(self) -> None:
        self._has = {name: self.plugins.has_impls(name) for name in _EVENT_HOOKS}
        self._has_dispatch = self._has["msgr_dispatch"]

    def _fire(self, hook_name: str, **kwargs: Any) -> None:
        """Call a connection-event hook if anything implements it; a plugin
        that raises is logged and never breaks the session."""
        if not self._has.get(hook_name):
            return
        try:
            getattr(self.plugins.hook, hook_name)(**kwargs)
        except Exception:
            log.exception("%s hook raised", hook_name)

    async def _call_lifecycle(self, hook_name: str, *, reverse: bool = False) -> None:
        results = getattr(self.plugins.hook, hook_name)(messenger=self)
        if reverse:
            results = list(reversed(results))
        for r in results:
            if inspect.isawaitable(r):
                await r

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("messenger task failed", exc_info=task.exception())

    def _count_error(self, kind: str) -> None:
        self._errors[kind] = self._errors.get(kind, 0) + 1

    def _count_rejected(self, reason: str) -> None:
        """An incoming link closed before (or instead of) becoming a session."""
        self._rejected[reason] = self._rejected.get(reason, 0) + 1

