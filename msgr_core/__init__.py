"""msgr core: the messenger, its session protocol, and the contracts plugins implement.

The public API is re-exported here::

    from msgr_core import Messenger, Message, Reply, Priority, Dispatcher
"""

from __future__ import annotations

from . import errors
from .config import Config, load_config
from .connection import Connection
from .dispatcher import Dispatcher
from .hookspecs import hookimpl, hookspec
from .message import Message, Priority, Reply
from .messenger import Messenger
from .policy import POLICIES, Policy
from .transport import Buffer, Frame, Link, LinkHandler, Listener, Transport, TransportOptions

__version__ = "0.1.0"

__all__ = [
    "POLICIES",
    "Buffer",
    "Config",
    "Connection",
    "Dispatcher",
    "Frame",
    "Link",
    "LinkHandler",
    "Listener",
    "Message",
    "Messenger",
    "Policy",
    "Priority",
    "Reply",
    "Transport",
    "TransportOptions",
    "__version__",
    "errors",
    "hookimpl",
    "hookspec",
    "load_config",
]
