"""A reference broadcast handler: a grow-only log of messages by id, with
pull anti-entropy.  Used by the tests and the simulation; a model for
application handlers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from .plumtree import Plumtree, _freeze

__all__ = ["MessageLog"]


class MessageLog:
    """Every message ever delivered, kept by id (never superseded, so never
    ``STALE``).  ``exchange(peer)`` pulls the ids the peer has and this node
    lacks, with two requests (``ptlog.ids.NAME``, ``ptlog.get.NAME``).

    :ivar messages: ``{msg_id: payload}`` delivered here (and broadcast from here).
    :ivar via_exchange: ids that arrived by anti-entropy, not by the tree.
    """

    def __init__(self, plumtree: Plumtree, name: str = "log", *, exchange_timeout: float = 5.0) -> None:
        self.plumtree = plumtree
        self.name = name
        self.exchange_timeout = exchange_timeout
        self.messages: dict[Any, Any] = {}
        self.via_exchange: set[Any] = set()
        self.on_new: list[Callable[[Any, Any], None]] = []
        self._ids = itertools.count()
        ms = plumtree.messenger
        ms.register_handler(f"ptlog.ids.{name}", lambda msg: list(self.messages))
        ms.register_handler(f"ptlog.get.{name}",
                            lambda msg: [[i, self.messages[_freeze(i)]] for i in msg.payload
                                         if _freeze(i) in self.messages])
        plumtree.register(name, self)

    def broadcast(self, payload: Any, msg_id: Any = None) -> Any:
        """Store ``payload`` here and broadcast it; returns its id
        (default ``"<node>:<counter>"``)."""
        if msg_id is None:
            msg_id = f"{self.plumtree.name}:{next(self._ids)}"
        msg_id = _freeze(msg_id)
        self._store(msg_id, payload)
        return self.plumtree.broadcast(self.name, (msg_id, payload))

    def _store(self, msg_id: Any, payload: Any) -> None:
        self.messages[msg_id] = payload
        for fn in self.on_new:
            fn(msg_id, payload)

    # -- the handler behaviour ----------------------------------------------

    def broadcast_data(self, message: Any) -> tuple[Any, Any]:
        msg_id, payload = message
        return msg_id, payload

    def merge(self, msg_id: Any, payload: Any) -> bool:
        if msg_id in self.messages:
            return False
        self._store(msg_id, payload)
        return True

    def is_stale(self, msg_id: Any) -> bool:
        return msg_id in self.messages

    def graft(self, msg_id: Any) -> Any:
        try:
            return self.messages[msg_id]
        except KeyError:
            raise LookupError(f"{self.plumtree.name} has no message {msg_id!r}") from None

    async def exchange(self, peer: str) -> int:
        """Pull what ``peer`` has and this node lacks; returns how many."""
        ms = self.plumtree.messenger
        theirs = await ms.send_message(f"ptlog.ids.{self.name}", peer, b"", timeout=self.exchange_timeout)
        missing = [i for i in theirs if _freeze(i) not in self.messages]
        if not missing:
            return 0
        got = await ms.send_message(f"ptlog.get.{self.name}", peer, missing, timeout=self.exchange_timeout)
        n = 0
        for i, payload in got:
            key = _freeze(i)
            if key not in self.messages:
                self.via_exchange.add(key)
                self._store(key, payload)
                n += 1
        return n
