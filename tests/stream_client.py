"""A client process that streams ``seq`` messages to a peer_node and reports.

``python stream_client.py ADDRESS COUNT [CONFIG_JSON]``

Prints JSON lines: ``{"event": "progress", "sent": N}`` every 5% of the
stream, ``{"event": "link_down"}`` / ``{"event": "link_up"}`` when its
session loses or regains its link, and finally ``{"event": "done",
"report": {...}, "stats": {...}}`` with the receiver's ``report``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from msgr_core import Messenger


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def main(address: str, total: int, extra: dict[str, Any]) -> None:
    config: dict[str, Any] = {"messenger": {"name": "streamer", "type": "client", "transports": ["tcp"]}}
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    async with Messenger.from_config(config) as ms:
        conn = ms.get_connection(address)
        await conn.request("msgr.ping", b"", timeout=30)

        async def watch() -> None:
            up = True
            while True:
                now = conn.is_open
                if now != up:
                    emit(event="link_up" if now else "link_down")
                    up = now
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        step = max(1, total // 20)
        pad = b"." * 56
        for i in range(total):
            await conn.send("seq", i.to_bytes(8, "big") + pad)
            if i % 64 == 0:
                await asyncio.sleep(0)
            if i % step == 0:
                emit(event="progress", sent=i)
        report = (await conn.request("report", b"", timeout=600)).payload
        watcher.cancel()
        emit(event="done", report=report, stats=conn.stats)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
