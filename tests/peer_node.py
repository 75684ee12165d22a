"""A messenger node in its own process, for the multi-process tests.

Run as ``python peer_node.py NAME LISTEN_ADDRESS``; prints its bound address
on the first line of stdout, then serves until stdin closes.

Verbs:
- ``seq`` (oneway): the payload is an 8-byte big-endian counter; checks each
  message carries exactly the next number (per sender).
- ``echo`` (request): replies with the payload.
- ``report`` (request): ``{"count", "disorder", "next"}`` for the caller.
"""

from __future__ import annotations

import asyncio
import sys

from msgr_core import Message, Messenger


async def main(name: str, listen: str) -> None:
    ms = Messenger.from_config({"messenger": {"name": name, "listen": [listen]}})
    expected: dict[str, int] = {}
    count: dict[str, int] = {}
    disorder: dict[str, int] = {}

    def seq(msg: Message) -> None:
        peer = msg.peer
        n = int.from_bytes(msg.payload[:8], "big")
        want = expected.get(peer, 0)
        if n != want:
            disorder[peer] = disorder.get(peer, 0) + 1
        expected[peer] = n + 1
        count[peer] = count.get(peer, 0) + 1

    ms.register_handler_oneway("seq", seq)
    ms.register_handler("echo", lambda msg: msg.payload)
    ms.register_handler(
        "report",
        lambda msg: {"count": count.get(msg.peer, 0), "disorder": disorder.get(msg.peer, 0),
                     "next": expected.get(msg.peer, 0)},
    )
    loop = asyncio.get_running_loop()
    async with ms:
        print(ms.addresses[0], flush=True)
        await loop.run_in_executor(None, sys.stdin.read)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
