"""A Plumtree node in its own process, for test_pt_procs.py.

``python pt_node.py NAME`` listens on ``tcp://127.0.0.1:0`` and prints
``addr <address>``.  Commands on stdin, one per line:
``peers <json {name: address}>`` (learn the addresses, install the view),
``bcast <text>`` (broadcast it through a ``MessageLog``).
Prints ``got <msg_id> <payload>`` for every new message; stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from msgr_plumtree import MessageLog

from msgr_core import Messenger


async def main(name: str) -> None:
    ms = Messenger.from_config({
        "messenger": {"name": name, "listen": ["tcp://127.0.0.1:0"], "extensions": ["plumtree"]},
        "plumtree": {"lazy_tick_period": 0.2, "exchange_tick_period": 1.0},
    })
    await ms.start()
    log = MessageLog(ms.extensions["plumtree"])

    def new(msg_id: Any, payload: Any) -> None:
        print("got", msg_id, payload.decode() if isinstance(payload, bytes) else payload, flush=True)

    log.on_new.append(new)
    print("addr", ms.addresses[0], flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "peers":
            peers = json.loads(arg)
            for peer, addr in peers.items():
                if peer != name:
                    ms.add_known_address(peer, [addr])
            ms.install_view(peers)
        elif cmd == "bcast":
            log.broadcast(arg.encode())
    await ms.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
