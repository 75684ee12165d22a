"""msgr-heartbeat: failure detection by heartbeats that ride the data connections.

Enable it with ``extensions = ["heartbeat"]`` in ``[messenger]``.

Following a Ceph proposal: instead of separate heartbeat connections (a Ceph
OSD keeps four heartbeat messengers), the heartbeat travels *out of band on
the sessions that carry the real traffic*.  So a heartbeat fails exactly
when the data path fails — a peer that stopped reading its socket is
detected even though its process is alive and would answer on another
connection — and every user's periodic ping (OSD ping, client linger ping,
watch/notify ping, ...) shares one frame per interval per connection
instead of being thousands of messages.

Features
--------

- One ping per session per ``interval``, sent as the OOB payload ``op``
  through :meth:`Messenger.register_oob_message
  <msgr_core.messenger.Messenger.register_oob_message>` (never queued
  behind data, never sequenced or replayed).  The ping carries the sender's
  clock and echoes the last ping it received from the peer, so each side
  measures the round-trip time without synchronised clocks.
- Per peer: last seen, RTT (last, moving average, min, max), misses,
  detections and recoveries — :meth:`Heartbeat.stats`.
- A peer whose newest echoed ping is older than ``grace`` is declared
  failed once: ``msgr_peer_failed(messenger, peer, reason)`` fires
  (through ``messenger.hook``, for other extensions and the application);
  when it answers again, ``msgr_peer_recovered(messenger, peer)`` fires.
  Detection happens within ``grace + interval`` of the failure.
- Judging by echoes catches a blocked *receive* path too: such a peer's
  pings keep arriving, but it never echoes ours.
- Watch every peer that sends heartbeats (default), or a configured set:
  watching a peer opens a session to it (and keeps redialling it while it
  is down, so its recovery is seen).
- **Piggy-backing.**  Anything registered with
  ``messenger.register_oob_message(op, callback, interval)`` with the same
  ``interval`` as the heartbeat — or through
  :meth:`Heartbeat.register_payload` — travels in the same frame as the
  ping: one frame per interval per connection, however many users.
  The receiver handles each op with ``messenger.register_oob_handler``.
- Per messenger: the detector lives in ``messenger.extensions["heartbeat"]``,
  so many messengers in one process each have their own.

Both ends must enable the extension (with the same ``op``): a peer that
does not echo pings is never judged unless it is watched, and a watched
peer that does not echo is declared failed.

Options
-------

Config section ``[heartbeat]``:

``interval`` (float, default ``6.0``)
    Seconds between pings on each session, and between failure checks
    (Ceph's ``osd_heartbeat_interval``, 6 s).
``grace`` (float, default ``20.0``)
    A peer that has not echoed a ping sent within this many seconds is
    failed (Ceph's ``osd_heartbeat_grace``, 20 s).  Keep it above twice
    ``interval`` plus the worst round-trip time, or a slow but healthy peer
    is declared failed.
``watch`` (list of str, default ``[]``)
    Entity names or addresses to watch; empty: every peer with a session
    that sends heartbeats.  A name needs a known address (a session seen
    earlier) before it can be dialled; until then it is only waited for.
``op`` (str, default ``"hb"``)
    The OOB op the pings travel as.

Example::

    [messenger]
    name = "osd.1"
    listen = ["tcp://0.0.0.0:6800"]
    extensions = ["heartbeat"]

    [heartbeat]
    interval = 6.0
    grace = 20.0
    watch = ["osd.2", "tcp://10.0.0.3:6800"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgr_core

from .heartbeat import Heartbeat, PeerState

if TYPE_CHECKING:
    from msgr_core import Messenger

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "EXTENSION",
    "Heartbeat",
    "PeerState",
    "__version__",
    "msgr_config_sections",
    "msgr_messenger_started",
    "msgr_messenger_stopping",
]

#: The name of the extension (entry point, config section, ``messenger.extensions`` key).
EXTENSION = "heartbeat"

#: The ``[heartbeat]`` section's keys and defaults (Ceph's 6 s / 20 s).
DEFAULTS: dict[str, Any] = {"interval": 6.0, "grace": 20.0, "watch": [], "op": "hb"}


@msgr_core.hookimpl
def msgr_config_sections() -> dict[str, dict[str, Any]]:
    """Declare ``[heartbeat]``."""
    return {EXTENSION: {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}}


@msgr_core.hookimpl
def msgr_messenger_started(messenger: Messenger) -> None:
    """Start this messenger's :class:`Heartbeat` (``messenger.extensions["heartbeat"]``).

    :raises ConfigError: ``interval`` or ``grace`` is not > 0.
    """
    cfg = messenger.config[EXTENSION]
    hb = Heartbeat(messenger, interval=cfg["interval"], grace=cfg["grace"], watch=list(cfg["watch"]),
                   op=cfg["op"])
    messenger.extensions[EXTENSION] = hb
    hb.start()


@msgr_core.hookimpl
def msgr_messenger_stopping(messenger: Messenger) -> None:
    """Stop checking and probing; no events fire after this."""
    hb = messenger.extensions.get(EXTENSION)
    if isinstance(hb, Heartbeat):
        hb.close()


@msgr_core.hookimpl
def msgr_view_changed(messenger: Messenger, members: frozenset[str]) -> None:
    """Forget unwatched peers that left the view (watched ones stay watched)."""
    hb = messenger.extensions.get(EXTENSION)
    if isinstance(hb, Heartbeat):
        hb.forget_except(members)
