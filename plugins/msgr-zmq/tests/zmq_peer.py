"""A msgr-zmq peer in a process of its own, for the process tests.

    zmq_peer.py listen ADDRESS HEARTBEAT_IVL HEARTBEAT_TIMEOUT
    zmq_peer.py connect ADDRESS HEARTBEAT_IVL HEARTBEAT_TIMEOUT

Listening, it prints its address; connecting, it prints "connected".
Either way it then echoes every frame it receives and sends a numbered
frame every millisecond, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys

from msgr_zmq import ZmqTransport

from msgr_core.transport import Buffer, Link, TransportOptions


class Echo:
    def __init__(self) -> None:
        self.link: Link | None = None

    def link_made(self, link: Link) -> None:
        self.link = link
        asyncio.get_running_loop().create_task(self.chatter(link))

    async def chatter(self, link: Link) -> None:
        n = 0
        while not link.is_closing():
            link.send([b"tick", b"%d" % n])
            n += 1
            await asyncio.sleep(0.001)

    def frame_received(self, frame: list[Buffer]) -> None:
        if self.link is not None and not self.link.is_closing():
            self.link.send(frame)

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    def link_lost(self, exc: BaseException | None) -> None:
        print("lost", exc, flush=True)


async def main(mode: str, address: str, ivl: float, timeout: float) -> None:
    settings = {"heartbeat_ivl": ivl, "heartbeat_timeout": timeout}
    transport = ZmqTransport(address.split("://")[0], TransportOptions(settings=settings))
    if mode == "listen":
        listener = await transport.listen(address, Echo)
        print(listener.address, flush=True)
    else:
        await transport.connect(address, Echo())
        print("connected", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
