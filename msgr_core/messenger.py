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
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import msgpack

from . import message as m
from .config import Config, load_config
from .connection import Connection, random_seeded
from .dispatcher import Dispatcher, DispatcherPlugin
from .errors import MessengerStopped, PeerUnreachable, ProtocolError
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
)


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
            if cls.config_section and cls.config_section not in config._declared:
                config.declare(cls.config_section, cls.config_defaults, owner=cls.distribution or scheme)
        for sections in self.plugins.hook.msgr_config_sections():
            for section, defaults in sections.items():
                config.declare(section, defaults, owner="extension")
        config.check_unknown_sections()
        self.extensions: dict[str, Any] = {}
        self._handlers: dict[str, Handler] = {}
        self._oneway_handlers: dict[str, Handler] = {}
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
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
        self._closed_stats = {"msgs_out": 0, "bytes_out": 0, "msgs_in": 0, "bytes_in": 0, "dropped": 0,
                              "handler_errors": 0, "unhandled": 0}
        self._resets = 0
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
        try:
            for addr in self.config["messenger"]["listen"]:
                scheme = split_address(addr)[0]
                transport = self._transport(scheme)
                listener = await transport.listen(addr, self._new_incoming)
                self._listeners.append(listener)
                log.info("%s listening on %s", self.name, listener.address)
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
        self._running = False
        for lst in self._listeners:
            await lst.aclose()
        self._listeners.clear()
        conns = self.connections
        if conns:
            await asyncio.gather(*(c._close_gracefully(timeout) for c in conns), return_exceptions=True)
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

    # -- sending -------------------------------------------------------------

    def get_connection(self, peer: str) -> Connection:
        """The session with ``peer``, an address (``tcp://host:port``) or an
        entity name whose addresses are known; created (and dialled in the
        background) if none is open.  Messages sent meanwhile are queued.

        :raises PeerUnreachable: ``peer`` is a name with no known address,
            or no address it offers has a usable transport.
        :raises MessengerStopped: the messenger is not running.
        """
        if not self._running:
            raise MessengerStopped(f"messenger {self.name} is not running")
        conn = self._by_name.get(peer) if "://" not in peer else self._by_addr.get(peer)
        if conn is not None and not conn.is_closed:
            return conn
        if "://" in peer:
            address = peer
            for c in self._by_name.values():
                if peer in c.peer_addrs and not c.is_closed:
                    return c
        else:
            addrs = self._known_addrs.get(peer)
            if not addrs:
                raise PeerUnreachable(peer, "no session and no known address for this name")
            address = self._choose_address(peer, addrs)
        scheme = split_address(address)[0]
        conn = Connection(self, outgoing=True, address=address, policy=get_policy(self.config.policy_for("")))
        self._by_addr[address] = conn
        transport = self._transport(scheme)

        async def connect(c: Connection) -> Link:
            return await transport.connect(address, c)

        self._spawn(conn._establish(connect))
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
            except Exception:
                continue
        raise PeerUnreachable(peer, f"no usable transport for its addresses {', '.join(addrs)}")

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
        for c in [*self._by_addr.values(), *self._by_name.values(), *self._accepted]:
            if not c.is_closed:
                seen[id(c)] = c
        return list(seen.values())

    @property
    def stats(self) -> dict[str, Any]:
        """Messenger-wide counters: totals over every session (closed ones
        included), open sessions, queue depths, resets and errors by type."""
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
            "errors": dict(self._errors),
        }

    def _status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "incarnation": self.incarnation,
            "addresses": self.addresses,
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

    def _new_incoming(self) -> Connection:
        conn = Connection(self, outgoing=False)
        self._accepted.add(conn)
        return conn

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
        }

    @staticmethod
    def _check_hello(hello: Any) -> str:
        """An error text if ``hello`` is malformed, else ``""``."""
        if not isinstance(hello, dict):
            return "handshake payload is not a map"
        for key, typ in (("v", int), ("name", str), ("type", str), ("incarnation", int), ("mode", str),
                         ("policy", str), ("addrs", list)):
            if not isinstance(hello.get(key), typ):
                return f"handshake field {key!r} missing or not {typ.__name__}"
        if not hello["name"] or len(hello["name"]) > 256:
            return "handshake field 'name' empty or over 256 characters"
        return ""

    def _accept(self, conn: Connection, hello: Any) -> None:
        problem = self._check_hello(hello)
        if problem:
            conn._protocol_error(ProtocolError(problem, peer=conn.address))
            return
        if hello["v"] != m.PROTOCOL_VERSION:
            conn._refuse(f"protocol version {hello['v']} not supported (this peer speaks {m.PROTOCOL_VERSION})")
            return
        if not self._running:
            conn._refuse("messenger stopping")
            return
        policy = get_policy(self.config.policy_for(hello["type"]))
        if policy.mode != hello["mode"]:
            conn._refuse(f"policy mismatch: {self.name} uses {policy.name} for peers of type "
                         f"{hello['type']!r}, {hello['name']} asked for {hello['policy']}")
            return
        conn.policy = policy
        self._accepted.discard(conn)
        old = self._by_name.get(hello["name"])
        conn._open(hello)
        conn._send_control(m.HELLO_OK, self._hello(conn))
        self._learn(conn)
        if old is not None and old is not conn and not old.outgoing and not old.is_closed:
            # lossy: the peer reconnected, so its old session is gone
            old._reset("replaced by a new session from the same peer", notify=True)
        if old is not None and old.peer_incarnation and old.peer_incarnation != conn.peer_incarnation:
            self._fire("msgr_handle_remote_reset", conn=conn)
        self._fire("msgr_handle_accept", conn=conn)

    def _connected(self, conn: Connection, hello: Any) -> None:
        problem = self._check_hello(hello)
        if problem:
            conn._protocol_error(ProtocolError(problem, peer=conn.address))
            return
        old = self._by_name.get(hello["name"])
        conn._open(hello)
        self._learn(conn)
        if old is not None and old is not conn and old.peer_incarnation != conn.peer_incarnation:
            self._fire("msgr_handle_remote_reset", conn=conn)
        self._fire("msgr_handle_connect", conn=conn)

    def _refused(self, conn: Connection, reason: str) -> None:
        log.warning("%s refused our connection: %s", conn.address, reason)
        self._fire("msgr_handle_refused", conn=conn, reason=reason)

    def _learn(self, conn: Connection) -> None:
        if (conn.peer_addrs and conn.peer_addrs != (conn.address,)) or conn.outgoing:
            self._known_addrs[conn.peer_name] = conn.peer_addrs
        current = self._by_name.get(conn.peer_name)
        if current is None or current.is_closed or conn.outgoing or not current.outgoing:
            self._by_name[conn.peer_name] = conn

    def _forget(self, conn: Connection) -> None:
        if self._by_addr.get(conn.address) is conn:
            del self._by_addr[conn.address]
        if conn.peer_name and self._by_name.get(conn.peer_name) is conn:
            del self._by_name[conn.peer_name]
        self._accepted.discard(conn)
        if conn.state == "closed" and conn.peer_name:
            self._resets += 1
        s = conn.stats
        for k in self._closed_stats:
            self._closed_stats[k] += s[k]
        # further use of the closed object must not count twice
        conn.msgs_out = conn.bytes_out = conn.msgs_in = conn.bytes_in = 0
        conn.dropped = conn.handler_errors = conn.unhandled = 0

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

    def fire_oob(self, conn: Connection, op: str, payload: Any) -> None:
        self._fire("msgr_dispatch_oob", conn=conn, op=op, payload=payload)

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

