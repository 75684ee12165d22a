"""msgr-gossip: Cassandra/ScyllaDB-style gossip membership for msgr.

Features
--------

- Endpoint state per node: generation (start time) + heartbeat version,
  application states ``STATUS``, ``ADDRS``, ``LOAD`` and user keys
  (:meth:`Gossiper.add_local_application_state`).
- A round every ``interval`` with Cassandra's target rules, SYN / ACK / ACK2
  as oneway verbs (ScyllaDB's asynchronous gossip: a round never waits),
  bounded pending exchanges per peer.
- Phi-accrual failure detection (window of 1000, Cassandra's scaling,
  conviction at ``phi_convict_threshold``, suppressed after a local pause),
  echo before marking alive, ``gossip.shutdown`` on a graceful stop,
  quarantine of removed endpoints.
- Callbacks (:class:`GossipSubscriber`) run off the round; the live set
  feeds ``messenger.install_view`` and the ``msgr_peer_failed`` /
  ``msgr_peer_recovered`` hooks; peers learn each other's addresses
  (``Messenger.add_known_address``).
- ``msgr gossip status ADDR`` and ``msgr sim gossip --nodes N`` (a
  simulation over ``loop://`` under virtual time).

Enable it with ``extensions = ["gossip"]``; the gossiper of a messenger is
``messenger.extensions["gossip"]``.

Address format
--------------

Seeds are messenger addresses of any installed transport
(``tcp://10.0.0.5:6800``, ``loop://n0``).

Options
-------

Config section ``[gossip]`` (see :data:`msgr_gossip.gossiper.DEFAULTS`):
``seeds`` (list of addresses), ``interval`` (1.0 s),
``phi_convict_threshold`` (8.0), ``fanout`` (1), ``quarantine`` (60 s),
``remove_after`` (3 days; 0 = never), ``max_local_pause`` (5 s),
``max_pending`` (2 SYNs per peer), ``max_queued_bytes`` (1 MiB),
``cluster`` ("msgr"), ``install_view`` (true), ``seed`` (-1: random).
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Any

import msgr_core

from .detector import PHI_FACTOR, ArrivalWindow
from .gossiper import ADDRS, DEFAULTS, LOAD, STATUS, EndpointState, Gossiper, GossipSubscriber

if TYPE_CHECKING:
    from msgr_core import Messenger
    from msgr_core.connection import Connection

__version__ = "0.1.0"

__all__ = [
    "ADDRS",
    "DEFAULTS",
    "LOAD",
    "PHI_FACTOR",
    "STATUS",
    "ArrivalWindow",
    "EndpointState",
    "GossipSubscriber",
    "Gossiper",
    "__version__",
    "get_gossiper",
]

SECTION = "gossip"
_log = logging.getLogger("msgr.messenger")


def get_gossiper(messenger: Messenger) -> Gossiper:
    """The messenger's gossiper.

    :raises KeyError: gossip is not enabled on it (or it is not started).
    """
    return messenger.extensions[SECTION]  # type: ignore[no-any-return]


@msgr_core.hookimpl
def msgr_config_sections() -> dict[str, dict[str, Any]]:
    """Declare ``[gossip]``."""
    return {SECTION: dict(DEFAULTS)}


@msgr_core.hookimpl
def msgr_messenger_started(messenger: Messenger) -> None:
    """Attach and start this messenger's :class:`Gossiper`."""
    gossiper = Gossiper(messenger, dict(messenger.config[SECTION]))
    messenger.extensions[SECTION] = gossiper
    gossiper.start()


@msgr_core.hookimpl
async def msgr_messenger_stopping(messenger: Messenger) -> None:
    """Announce the shutdown to live peers (``gossip.shutdown``)."""
    gossiper = messenger.extensions.get(SECTION)
    if isinstance(gossiper, Gossiper):
        await gossiper.stop()


@msgr_core.hookimpl
def msgr_undeliverable(conn: Connection, messages: list[tuple[str, Any]], reason: str) -> None:
    """SYNs to a dead node are expected to fail (at debug level); anything
    else is logged as the core would without this hook."""
    others = sum(1 for verb, _payload in messages if not verb.startswith("gossip."))
    if others:
        _log.warning("%d message(s) to %s undeliverable: %s", others, conn.peer_name or conn.address, reason)
    if len(messages) > others:
        _log.debug("%d gossip message(s) to %s undeliverable: %s", len(messages) - others,
                   conn.peer_name or conn.address, reason)


@msgr_core.hookimpl
def msgr_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``msgr gossip status ADDR`` and ``msgr sim gossip``."""
    from .cli import add_commands

    add_commands(subparsers)
