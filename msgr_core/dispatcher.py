"""Ceph-style :class:`Dispatcher`: connection events as methods.

Subclass it, override what you need, and pass it to
:meth:`Messenger.add_dispatcher <msgr_core.messenger.Messenger.add_dispatcher>`.
It is the object form of the connection-event hooks in
:mod:`msgr_core.hookspecs`; both may be used at once.  Methods run on the
event loop and must not block; an exception is logged and never breaks
the session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .connection import Connection
    from .message import Message

__all__ = ["Dispatcher"]


class Dispatcher:
    """Override the events you care about; the defaults do nothing."""

    def dispatch(self, conn: Connection, message: Message) -> bool:
        """A oneway message no verb handler claimed.  Return True if handled."""
        return False

    def dispatch_oob(self, conn: Connection, op: str, payload: Any) -> None:
        """An out-of-band payload arrived."""

    def handle_connect(self, conn: Connection) -> None:
        """An outgoing session completed its handshake."""

    def handle_accept(self, conn: Connection) -> None:
        """An incoming session completed its handshake."""

    def handle_reset(self, conn: Connection, reason: str) -> None:
        """A session was reset; its pending messages were failed."""

    def handle_remote_reset(self, conn: Connection) -> None:
        """The peer restarted (new incarnation)."""

    def handle_refused(self, conn: Connection, reason: str) -> None:
        """The peer refused our handshake."""

    def handle_undeliverable(self, conn: Connection, messages: list[tuple[str, Any]], reason: str) -> None:
        """Oneway ``(verb, payload)`` messages that will never be delivered."""


class DispatcherPlugin:
    """Adapts a :class:`Dispatcher` to the pluggy hooks (internal)."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        cls = type(dispatcher)
        # Register only what the subclass overrides, so unimplemented events
        # stay free (the messenger skips hooks nobody implements).
        for name in ("dispatch", "dispatch_oob", "handle_connect", "handle_accept", "handle_reset",
                     "handle_remote_reset", "handle_refused", "handle_undeliverable"):
            if getattr(cls, name) is getattr(Dispatcher, name):
                hook = "msgr_undeliverable" if name == "handle_undeliverable" else f"msgr_{name}"
                setattr(self, hook, None)

    @hookimpl
    def msgr_dispatch(self, conn: Connection, message: Message) -> bool | None:
        return self.d.dispatch(conn, message) or None

    @hookimpl
    def msgr_dispatch_oob(self, conn: Connection, op: str, payload: Any) -> None:
        self.d.dispatch_oob(conn, op, payload)

    @hookimpl
    def msgr_handle_connect(self, conn: Connection) -> None:
        self.d.handle_connect(conn)

    @hookimpl
    def msgr_handle_accept(self, conn: Connection) -> None:
        self.d.handle_accept(conn)

    @hookimpl
    def msgr_handle_reset(self, conn: Connection, reason: str) -> None:
        self.d.handle_reset(conn, reason)

    @hookimpl
    def msgr_handle_remote_reset(self, conn: Connection) -> None:
        self.d.handle_remote_reset(conn)

    @hookimpl
    def msgr_handle_refused(self, conn: Connection, reason: str) -> None:
        self.d.handle_refused(conn, reason)

    @hookimpl
    def msgr_undeliverable(self, conn: Connection, messages: list[tuple[str, Any]], reason: str) -> None:
        self.d.handle_undeliverable(conn, messages, reason)
