"""Workers for ``raw-asyncio``: the framed stream of :mod:`benchmarks.framed`."""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

from .common import BATCH, END, OnewayCounter, async_sender_loop, payload_of, reqrep_client_loop
from .framed import U32, FrameReceiver, FrameSender, RawClient, RawServer
from .harness import BenchError, Control, run_async

HOST = "127.0.0.1"


def oneway_receiver(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        counter = OnewayCounter(ctl)
        server = await loop.create_server(lambda: FrameReceiver(counter.on_body), HOST, 0)
        ctl.send("ready", {"host": HOST, "port": server.sockets[0].getsockname()[1]})
        await ctl.serve_until_stop()
        server.close()

    run_async(main, params["loop"])


def oneway_sender(ctl: Control, params: dict[str, Any]) -> None:
    size: int = params["size"]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_connection(FrameSender, params["host"], params["port"])
        payload = payload_of(size)
        pack = U32.pack

        async def send_round(seconds: float) -> int:
            sent = 0
            deadline = perf_counter() + seconds
            if size < 65536:
                # Batches through writelines (one send for the batch).
                while perf_counter() < deadline:
                    batch: list[bytes] = []
                    for _ in range(BATCH):
                        batch.append(pack(size))
                        batch.append(payload)
                    transport.writelines(batch)
                    sent += BATCH
                    if proto.paused:
                        await proto.writable()
            else:
                # Large bodies: prefix and body as separate writes (writelines
                # would join them into a copy first on Python < 3.12).
                while perf_counter() < deadline:
                    transport.write(pack(size))
                    transport.write(payload)
                    sent += 1
                    if proto.paused:
                        await proto.writable()
            transport.write(pack(1) + END)
            return sent

        await async_sender_loop(ctl, send_round)
        transport.close()

    run_async(main, params["loop"])


def _echo(payload: bytes | bytearray) -> bytes | bytearray:
    return payload


def reqrep_server(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: RawServer(_echo), HOST, 0)
        ctl.send("ready", {"host": HOST, "port": server.sockets[0].getsockname()[1]})
        await ctl.serve_until_stop()
        server.close()

    run_async(main, params["loop"])


def reqrep_client(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_connection(RawClient, params["host"], params["port"])
        payload = payload_of(params["size"])
        if await client.request(payload) != payload:
            raise BenchError("raw echo returned a different payload")
        await reqrep_client_loop(ctl, client.request, params)
        transport.close()

    run_async(main, params["loop"])
