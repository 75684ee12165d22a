"""msgr transport over named pipes: ``fifo:///PATH`` (an example third-party plugin).

Features
========

- Links between processes on one host over a pair of FIFOs each
  (:mod:`msgr_fifo.transport` tells how a link is made).
- Frames with :mod:`msgr_core.framing`: buffer boundaries kept, bad input
  (wrong banner, oversize frame, inconsistent lengths) closes that link alone
  with :class:`~msgr_core.errors.ProtocolError` /
  :class:`~msgr_core.errors.FrameTooLarge`.
- Back-pressure from asyncio's pipe transports: the messenger's watermarks
  are their write buffer limits; ``pause_reading`` / ``resume_reading``.
- Not zero-copy: asyncio's pipe transport joins the buffers of a frame
  before writing.  A peer that dies between two frames looks like an orderly
  close (``link_lost(None)``): a FIFO only says "no writer left".

Address format
==============

``fifo:///ABSOLUTE/PATH``
    the listener's accept FIFO (created by ``listen``, removed by
    ``Listener.aclose``; one left behind by a dead listener is replaced).
``fifo://``
    in ``listen`` only: a fresh FIFO in a new temporary directory (the
    equivalent of port 0); ``listener.address`` is the real path.

Options
=======

The config section ``[fifo]``:

``close_timeout`` (``10.0``)
    seconds ``Link.close()`` waits for the peer to close its end before it
    aborts the link.
``tmpdir`` (``""``)
    where clients make their FIFO pairs (default: the system's temporary
    directory).
"""

from __future__ import annotations

import msgr_core
from msgr_core.transport import Transport

from .transport import FifoLink, FifoListener, FifoTransport

__version__ = "0.1.0"

__all__ = ["FifoLink", "FifoListener", "FifoTransport", "__version__", "msgr_register_transports"]


@msgr_core.hookimpl
def msgr_register_transports() -> list[type[Transport]]:
    """The transports this plugin provides: :class:`FifoTransport`."""
    return [FifoTransport]
