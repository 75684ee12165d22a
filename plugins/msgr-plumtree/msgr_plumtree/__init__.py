"""msgr-plumtree: epidemic broadcast trees (Plumtree) over msgr.

Enable it with ``extensions = ["plumtree"]`` in ``[messenger]``; the
broadcast server of each messenger is ``messenger.extensions["plumtree"]``
(a :class:`Plumtree`).

Membership comes from the installed view (``msgr_view_changed``) and from
failure detectors (``msgr_peer_failed`` / ``msgr_peer_recovered``), never
by importing gossip or heartbeat.  Every protocol message is a oneway verb
over the messenger (see :mod:`msgr_plumtree.plumtree`).

Options
-------

Config section ``[plumtree]``:

``lazy_tick_period`` (float, default ``1.0``)
    Seconds between flushes of the outstanding ``i_have`` lazy pushes
    (resent every tick until acknowledged).
``exchange_tick_period`` (float, default ``10.0``)
    Seconds between anti-entropy exchanges with a random member.
``max_exchanges`` (int, default ``1``)
    Exchanges running at once at most.
``graft_mode`` (str, default ``"partisan"``)
    ``"partisan"``: graft at once on an ``i_have`` for a missing message
    (riak_core / Partisan); ``"paper"``: wait ``graft_timeout``, graft from
    the first announcer, then the next one every ``graft_retry_timeout``.
``graft_timeout`` (float, default ``0.5``)
    Paper mode's first timer (choose it from the overlay's diameter times
    the per-hop latency, plus the target recovery latency).
``graft_retry_timeout`` (float, default ``0.25``)
    Paper mode's second timer (about one round trip).
``peer_sampling`` (str, default ``"view"``)
    ``"view"``: full membership from the view.  ``"hyparview"``: HyParView
    (:class:`HyParView`, ``messenger.extensions["hyparview"]``): join
    through ``contacts`` (addresses), the active view is Plumtree's
    neighbours; the view is ignored.  Its keys: ``contacts`` (list),
    ``active_size`` (5), ``passive_size`` (30), ``arwl`` (6), ``prwl`` (3),
    ``shuffle_period`` (10.0 s), ``shuffle_active`` (3), ``shuffle_passive``
    (4), ``shuffle_ttl`` (6), ``close_idle_sessions`` (true: sessions with
    nodes outside the active view close after a shuffle period without
    traffic, so a node keeps about ``active_size`` sessions, not one per
    node it ever shuffled with).
``tree`` (str, default ``"per_root"``)
    ``"per_root"``: a broadcast tree per sender, each built by its first
    broadcasts (riak_core, Partisan); ``"shared"``: one tree for every
    sender (the paper): a new sender costs no redundancy, but its messages
    may travel longer paths.
``eager_gossip_fanout`` (int, default ``0``)
    ``0``: Plumtree.  ``> 0``: the paper's baseline instead, *eager push
    gossip*: every new message is pushed to that many random members (the
    peer sampling's neighbours; never the sender), with no lazy push, prune
    or graft.  Over HyParView's active view of 5, fanout 4 floods every
    link but the sender's: RMR about 3.
``seed`` (int, default ``0``)
    Seeds the initial overlay (the same on every node) and the choice of
    exchange peers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgr_core
from msgr_core.errors import ConfigError

from .hyparview import HyParView
from .log import MessageLog
from .plumtree import STALE, BroadcastHandler, Plumtree, initial_counts, overlay

if TYPE_CHECKING:
    import argparse

    from msgr_core import Messenger

__version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "EXTENSION",
    "HYPARVIEW",
    "HyParView",
    "STALE",
    "BroadcastHandler",
    "MessageLog",
    "Plumtree",
    "__version__",
    "initial_counts",
    "msgr_cli_commands",
    "msgr_config_sections",
    "msgr_messenger_started",
    "msgr_messenger_stopping",
    "msgr_peer_failed",
    "msgr_peer_recovered",
    "msgr_view_changed",
    "overlay",
]

#: The name of the extension (entry point, config section, ``messenger.extensions`` key).
EXTENSION = "plumtree"

#: The ``messenger.extensions`` key of the :class:`HyParView` object (``peer_sampling = "hyparview"``).
HYPARVIEW = "hyparview"

#: The ``[plumtree]`` section's keys and defaults.
DEFAULTS: dict[str, Any] = {
    "lazy_tick_period": 1.0,
    "exchange_tick_period": 10.0,
    "max_exchanges": 1,
    "graft_mode": "partisan",
    "graft_timeout": 0.5,
    "graft_retry_timeout": 0.25,
    "peer_sampling": "view",
    "seed": 0,
    "tree": "per_root",
    "eager_gossip_fanout": 0,
    # HyParView (peer_sampling = "hyparview")
    "contacts": [],
    "active_size": 5,
    "passive_size": 30,
    "arwl": 6,
    "prwl": 3,
    "shuffle_period": 10.0,
    "shuffle_active": 3,
    "shuffle_passive": 4,
    "shuffle_ttl": 6,
    "close_idle_sessions": True,
}


@msgr_core.hookimpl
def msgr_config_sections() -> dict[str, dict[str, Any]]:
    """Declare ``[plumtree]``."""
    return {EXTENSION: {k: (list(v) if isinstance(v, list) else v) for k, v in DEFAULTS.items()}}


def _get(messenger: Messenger) -> Plumtree | None:
    pt = messenger.extensions.get(EXTENSION)
    return pt if isinstance(pt, Plumtree) else None


@msgr_core.hookimpl
def msgr_cli_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``msgr sim plumtree``."""
    from .cli import add_commands

    add_commands(subparsers)


@msgr_core.hookimpl
def msgr_messenger_started(messenger: Messenger) -> None:
    """Start this messenger's :class:`Plumtree` (``messenger.extensions["plumtree"]``).

    :raises ConfigError: a ``[plumtree]`` value is out of range, or
        ``peer_sampling`` is not ``"view"``.
    """
    cfg = messenger.config[EXTENSION]
    if cfg["peer_sampling"] not in ("view", "hyparview"):
        raise ConfigError("plumtree.peer_sampling", cfg["peer_sampling"], '"view" or "hyparview"')
    pt = Plumtree(messenger, lazy_tick_period=cfg["lazy_tick_period"],
                  exchange_tick_period=cfg["exchange_tick_period"], graft_mode=cfg["graft_mode"],
                  graft_timeout=cfg["graft_timeout"], graft_retry_timeout=cfg["graft_retry_timeout"],
                  max_exchanges=cfg["max_exchanges"], seed=cfg["seed"], tree=cfg["tree"],
                  eager_gossip_fanout=cfg["eager_gossip_fanout"])
    messenger.extensions[EXTENSION] = pt
    if cfg["peer_sampling"] == "hyparview":
        hv = HyParView(messenger, pt, contacts=list(cfg["contacts"]), active_size=cfg["active_size"],
                       passive_size=cfg["passive_size"], arwl=cfg["arwl"], prwl=cfg["prwl"],
                       shuffle_period=cfg["shuffle_period"], shuffle_active=cfg["shuffle_active"],
                       shuffle_passive=cfg["shuffle_passive"], shuffle_ttl=cfg["shuffle_ttl"], seed=cfg["seed"],
                       close_idle_sessions=cfg["close_idle_sessions"])
        messenger.extensions[HYPARVIEW] = hv
        pt.start(use_view=False)
        hv.start()
    else:
        pt.start()


@msgr_core.hookimpl
def msgr_messenger_stopping(messenger: Messenger) -> None:
    """Stop the ticks, timers and exchanges."""
    hv = messenger.extensions.get(HYPARVIEW)
    if isinstance(hv, HyParView):
        hv.close()
    pt = _get(messenger)
    if pt is not None:
        pt.close()


@msgr_core.hookimpl
def msgr_view_changed(messenger: Messenger, members: frozenset[str]) -> None:
    """A new view: :meth:`Plumtree.update` (ignored with HyParView, which
    keeps its own views)."""
    pt = _get(messenger)
    if pt is not None and HYPARVIEW not in messenger.extensions:
        pt.update(members)


@msgr_core.hookimpl
def msgr_peer_failed(messenger: Messenger, peer: str, reason: str) -> None:
    """A failure detector failed ``peer``: :meth:`Plumtree.neighbor_down`,
    or with HyParView :meth:`HyParView.peer_failed` (replaced from the passive view)."""
    hv = messenger.extensions.get(HYPARVIEW)
    if isinstance(hv, HyParView):
        hv.peer_failed(peer)
        return
    pt = _get(messenger)
    if pt is not None:
        pt.neighbor_down(peer)


@msgr_core.hookimpl
def msgr_peer_recovered(messenger: Messenger, peer: str) -> None:
    """``peer`` is back: :meth:`Plumtree.neighbor_up` (with HyParView: it
    may come back through a join or a shuffle)."""
    pt = _get(messenger)
    if pt is not None and HYPARVIEW not in messenger.extensions:
        pt.neighbor_up(peer)
