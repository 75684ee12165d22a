"""Every pluggy hook msgr defines.

Plugins implement these with :data:`msgr_core.hookimpl`.  Transport plugins
are found through the entry-point group ``msgr.transports``, extensions
through ``msgr.extensions``; an entry's name is the name used in config.

Hooks are grouped by family.  None of them is called per message: the
messenger builds its dispatch tables at start-up, and connection-event hooks
that no plugin implements are never called at all.

Wrappers must be new-style (``@hookimpl(wrapper=True)``).

.. versionadded:: 0.1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from .connection import Connection
    from .message import Message
    from .messenger import Messenger
    from .transport import Transport

PROJECT = "msgr"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# -- registration -----------------------------------------------------------
# Called once per plugin manager, when the messenger (or the CLI) loads its
# plugins, before anything starts.


@hookspec
def msgr_register_transports() -> Sequence[type[Transport]]:
    """Return the :class:`~msgr_core.transport.Transport` classes this plugin
    provides.  Each class serves the URI schemes in its ``schemes``.

    All results are merged into the messenger's
    :class:`~msgr_core.registry.TransportRegistry`; two plugins serving the
    same scheme is a :class:`~msgr_core.errors.PluginError`.
    """
    raise NotImplementedError


@hookspec
def msgr_config_sections() -> dict[str, dict[str, Any]]:
    """Return ``{section_name: {key: default}}`` for the config sections this
    plugin owns (``{"gossip": {"interval": 1.0, "seeds": []}}``).

    The config checker accepts exactly these keys in that section, checks
    each value against the default's type, and fills in the defaults.
    A transport's ``config_section`` / ``config_defaults`` are declared
    automatically; transports need not implement this.
    """
    raise NotImplementedError


@hookspec
def msgr_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add subcommands to the ``msgr`` CLI.

    Add a parser with ``subparsers.add_parser(name, help=...)`` and set
    ``func`` with ``parser.set_defaults(func=callable)``; the callable gets
    the parsed ``argparse.Namespace`` and returns an exit code.  Called with
    every installed plugin loaded.
    """


# -- messenger lifecycle ----------------------------------------------------


@hookspec
def msgr_messenger_started(messenger: Messenger) -> None:
    """The messenger is listening and ready to send.  Extensions attach their
    per-messenger state here (``messenger.extensions[name] = ...``); many
    messengers may live in one process.  Called in plugin registration order.
    May return an awaitable, which the messenger awaits before ``start``
    returns.
    """


@hookspec
def msgr_messenger_stopping(messenger: Messenger) -> None:
    """The messenger is about to stop: sessions are still up, so this is the
    time to say goodbye to peers.  Called in reverse registration order.
    May return an awaitable, which is awaited (bounded by the stop timeout).
    """


# -- connection events (Ceph's Dispatcher) -----------------------------------


@hookspec
def msgr_handle_connect(conn: Connection) -> None:
    """An outgoing session finished its handshake (we connected)."""


@hookspec
def msgr_handle_accept(conn: Connection) -> None:
    """An incoming session finished its handshake (the peer connected)."""


@hookspec
def msgr_handle_reset(conn: Connection, reason: str) -> None:
    """A session was reset: its pending messages were failed.  Fires on both
    ends of a lossy session whose link broke, after ``mark_down``, and for
    sessions to peers removed from the view."""


@hookspec
def msgr_handle_remote_reset(conn: Connection) -> None:
    """The peer restarted (its incarnation changed); the old session's state
    was discarded."""


@hookspec
def msgr_handle_refused(conn: Connection, reason: str) -> None:
    """Our connection attempt was refused by the peer's handshake (policy
    mismatch, authentication, version); ``reason`` is the peer's text."""


@hookspec(firstresult=True)
def msgr_dispatch(conn: Connection, message: Message) -> bool | None:
    """A message arrived for a verb no handler is registered for.  Return
    ``True`` if handled; the first ``True`` stops the call.  Unclaimed
    messages are counted (``stats.unhandled``) and logged, and a request
    gets an :class:`~msgr_core.errors.UnknownVerb` error reply."""


@hookspec
def msgr_dispatch_oob(conn: Connection, op: str, payload: Any) -> None:
    """An out-of-band payload ``op`` arrived on ``conn`` and no handler was
    registered for it with ``Messenger.register_oob_handler``."""


@hookspec
def msgr_undeliverable(conn: Connection, messages: list[tuple[str, Any]], reason: str) -> None:
    """Oneway messages that will never be delivered: the session was reset
    (lossy link fault, ``mark_down``, the peer left the view or restarted)
    while they were queued or unacknowledged.  ``messages`` holds
    ``(verb, payload)`` pairs in send order.  (Requests are reported through
    their own ``ConnectionReset``.)  Without an implementation, the messenger
    logs a warning with the count."""


# -- cluster ------------------------------------------------------------------
# Extensions call these through ``messenger.hook`` to tell each other about
# membership without importing each other.


@hookspec
def msgr_view_changed(messenger: Messenger, members: frozenset[str]) -> None:
    """``messenger.install_view`` installed a new set of members."""


@hookspec
def msgr_peer_failed(messenger: Messenger, peer: str, reason: str) -> None:
    """A failure detector (heartbeat, gossip) declared ``peer`` failed."""


@hookspec
def msgr_peer_recovered(messenger: Messenger, peer: str) -> None:
    """A failure detector saw ``peer`` come back."""
