"""A messenger in its own process, serving ``rdma://`` over the
``emulated-ipc`` backend, for the two-process tests.

``python rdma_peer_node.py NAME CONFIG_JSON`` prints its address on the
first line of stdout, then serves until stdin closes.  ``CONFIG_JSON`` is
merged into its config (``rdma`` settings, ``inject``, ...).

Verbs: ``seq`` (oneway; the payload starts with an 8-byte big-endian
counter; each must be the next one from its sender), ``echo`` (request),
``report`` (request: ``{"count", "disorder", "next"}`` for the caller).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from msgr_core import Message, Messenger


async def main(name: str, extra: dict[str, Any]) -> None:
    config: dict[str, Any] = {
        "messenger": {"name": name, "listen": ["rdma://127.0.0.1:0"], "transports": ["rdma"]},
        "rdma": {"backend": "emulated-ipc"},
    }
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    ms = Messenger.from_config(config)
    expected: dict[str, int] = {}
    count: dict[str, int] = {}
    disorder: dict[str, int] = {}

    def seq(msg: Message) -> None:
        n = int.from_bytes(msg.payload[:8], "big")
        if n != expected.get(msg.peer, 0):
            disorder[msg.peer] = disorder.get(msg.peer, 0) + 1
        expected[msg.peer] = n + 1
        count[msg.peer] = count.get(msg.peer, 0) + 1

    def report(msg: Message) -> dict[str, int]:
        p = msg.peer
        return {"count": count.get(p, 0), "disorder": disorder.get(p, 0), "next": expected.get(p, 0)}

    ms.register_handler_oneway("seq", seq)
    ms.register_handler("echo", lambda msg: msg.payload)
    ms.register_handler("report", report)
    async with ms:
        print(ms.addresses[0], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}))
