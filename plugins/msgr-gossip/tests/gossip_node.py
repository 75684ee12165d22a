"""A gossiping messenger in its own process, for test_gossip_procs.py.

``python gossip_node.py NAME CONFIG_JSON`` prints ``addr <address>``, then one
line per membership event (``alive <peer>``, ``dead <peer>``), and stops
gracefully (``gossip.shutdown`` to its peers) when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from msgr_gossip import EndpointState, GossipSubscriber, get_gossiper

from msgr_core import Messenger


class Printer(GossipSubscriber):
    def on_alive(self, endpoint: str, state: EndpointState) -> None:
        print("alive", endpoint, flush=True)

    def on_dead(self, endpoint: str, state: EndpointState) -> None:
        print("dead", endpoint, flush=True)


async def main(name: str, extra: dict[str, Any]) -> None:
    config: dict[str, Any] = {"messenger": {"name": name, "listen": ["tcp://127.0.0.1:0"],
                                            "extensions": ["gossip"]}}
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    ms = Messenger.from_config(config)
    await ms.start()
    get_gossiper(ms).subscribe(Printer())
    print("addr", ms.addresses[0], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await ms.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))
