"""A messenger node in its own process, for the multi-process tests.

``python peer_node.py NAME LISTEN_ADDRESS [CONFIG_JSON]`` prints its bound
address on the first line of stdout, then serves until stdin closes.
``CONFIG_JSON`` is merged into its config (policy, inject, session, ...).

Verbs:
- ``seq`` (oneway): the payload starts with an 8-byte big-endian counter;
  checks each message carries exactly the next number (per sender).
- ``echo`` (request): replies with the payload.
- ``count`` (request): counts calls per payload (to prove each request is
  handled once) and replies with the payload.
- ``report`` (request): ``{"count", "disorder", "next", "handled", "twice"}``
  for the caller.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from msgr_core import Message, Messenger


async def main(name: str, listen: str, extra: dict[str, Any]) -> None:
    config: dict[str, Any] = {"messenger": {"name": name, "listen": [listen]}}
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    ms = Messenger.from_config(config)
    expected: dict[str, int] = {}
    count: dict[str, int] = {}
    disorder: dict[str, int] = {}
    handled: dict[str, dict[bytes, int]] = {}

    def seq(msg: Message) -> None:
        peer = msg.peer
        n = int.from_bytes(msg.payload[:8], "big")
        if n != expected.get(peer, 0):
            disorder[peer] = disorder.get(peer, 0) + 1
        expected[peer] = n + 1
        count[peer] = count.get(peer, 0) + 1

    def count_call(msg: Message) -> Any:
        seen = handled.setdefault(msg.peer, {})
        key = bytes(msg.payload)
        seen[key] = seen.get(key, 0) + 1
        return msg.payload

    def report(msg: Message) -> dict[str, int]:
        peer = msg.peer
        calls = handled.get(peer, {})
        return {"count": count.get(peer, 0), "disorder": disorder.get(peer, 0), "next": expected.get(peer, 0),
                "handled": len(calls), "twice": sum(1 for n in calls.values() if n > 1)}

    ms.register_handler_oneway("seq", seq)
    ms.register_handler("echo", lambda msg: msg.payload)
    ms.register_handler("count", count_call)
    ms.register_handler("report", report)
    loop = asyncio.get_running_loop()
    async with ms:
        print(ms.addresses[0], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
