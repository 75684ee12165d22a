"""msgr-loopback: the in-process ``loop://`` transport and its simulated network.

Features
--------

- In-process links between messengers of one event loop: no sockets, no
  serialisation, **zero-copy** — the receiver gets the very buffer objects
  the sender passed (the contract makes them the receiver's once sent).
- Delivery is always asynchronous (never from inside ``send``), in order,
  batched: one loop callback per link end delivers every due frame.
- Back-pressure: ``write_buffer_size()`` is the bytes sent and not yet
  delivered; ``pause_writing`` / ``resume_writing`` fire as it crosses the
  watermarks (which happens when delay, a stalled node or
  :meth:`LoopLink.pause_reading` holds frames back).
- ``max_frame_bytes`` enforced on send (``FrameTooLarge``, link stays up)
  and on receipt (the receiver's own limit: ``link_lost(FrameTooLarge)``).
- A :class:`SimNetwork` behind the links that tests and simulations
  control: per-pair delay and jitter (never reordering), drop probability
  (a drop *breaks* the link — links are reliable while up), partitions,
  killing links or whole nodes, stalling a receiver, and statistics.
- Runs under virtual time (``looptime``): only loop timers, no task per
  link or frame — thousands of nodes in one process.

Address format
--------------

``loop://name``, where ``name`` is one or more of ``A-Z a-z 0-9 . _ ~ + -``
(case-sensitive).  ``listen("loop://")`` picks a unique name (the port-0
equivalent) and reports it in ``Listener.address``.  Names live in a
:class:`SimNetwork`, one namespace per network per event loop.  The
accepting side sees the connecting node as ``loop://<node>``.

Options
-------

Config section ``[loop]``:

``network`` (str, default ``"default"``)
    Which network of the running loop the transport joins
    (:func:`get_network` with that name).  A :class:`SimNetwork` object
    is accepted too, when options are built in code.
``node`` (str, default ``""``)
    This transport's node name, used by the network's rules and
    statistics.  Empty: the name of its first listener, or a generated
    ``node-N`` if it connects before listening.

Controlling the network::

    net = msgr_loopback.get_network()          # inside the running loop
    net.set_delay(None, None, 0.001, jitter=0.0005)
    net.set_delay("a", "b", 0.050)             # both directions
    net.set_drop("a", "c", 0.01)               # a drop breaks the link
    net.partition(["a", "b"], ["c"])           # heal() undoes it
    net.kill_node("b"); net.revive_node("b")
    net.stall("c"); net.unstall("c")
    net.pair_stats("a", "b").frames
"""

from __future__ import annotations

import msgr_core
from msgr_core.transport import Transport

from .network import NetworkStats, PairStats, PathRules, SimNetwork, get_network
from .transport import LoopLink, LoopListener, LoopTransport

__version__ = "0.1.0"

__all__ = [
    "LoopLink",
    "LoopListener",
    "LoopTransport",
    "NetworkStats",
    "PairStats",
    "PathRules",
    "SimNetwork",
    "__version__",
    "get_network",
    "msgr_register_transports",
]


@msgr_core.hookimpl
def msgr_register_transports() -> list[type[Transport]]:
    """Register :class:`LoopTransport` for the ``loop`` scheme."""
    return [LoopTransport]
