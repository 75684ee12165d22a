"""Workers for msgr itself, used exactly as an application would use it.

Receivers are messengers with a oneway handler (a plain function: the fast
kind) per verb; senders get a :class:`~msgr_core.connection.Connection`
with :meth:`Messenger.get_connection` and hand messages over with
``send_nowait`` in batches followed by ``await conn.drain()`` (small
messages) or ``await conn.send`` (large ones) — the documented ways to
respect back-pressure.  Servers answer ``echo`` with a plain function;
clients call ``await conn.request``.
"""

from __future__ import annotations

import asyncio
import functools
from time import perf_counter
from typing import Any

from .common import BATCH, OnewayCounter, async_sender_loop, payload_of, reqrep_client_loop
from .harness import BenchError, Control, run_async

LISTEN = {"tcp": "tcp://127.0.0.1:0", "unix": "unix://{tmp}/bench-{pid}.sock", "loop": "loop://bench-rx",
          "zmq+tcp": "zmq+tcp://127.0.0.1:0"}


# params["policy"] -> (the dialling side's policy, the accepting side's)
POLICIES = {"lossy": ("lossy_client", "stateless_server"), "lossless": ("lossless_client", "stateful_server")}


def _config(name: str, params: dict[str, Any], *, server: bool, listen: list[str] | None = None,
            transports: list[str] | None = None) -> dict[str, Any]:
    policy = POLICIES[params.get("policy", "lossy")][1 if server else 0]
    cfg: dict[str, Any] = {
        "messenger": {"name": name, "type": "bench", "listen": listen or [], "transports": transports or []},
        "policy": {"default": policy},
    }
    # For experiments (not used by the suite's cases): transport sections,
    # e.g. {"tcp": {"receive_buffer": 8192}}.
    cfg.update(params.get("transport_settings") or {})
    return cfg


def _listen_address(scheme: str) -> str:
    import os
    import tempfile

    return LISTEN[scheme].format(tmp=tempfile.gettempdir(), pid=os.getpid())


def _messenger(cfg: dict[str, Any]) -> Any:
    from msgr_core import Messenger

    return Messenger.from_config(cfg)


async def _open(ms: Any, address: str) -> Any:
    """A connection to ``address``, handshake done (a built-in ping round trip)."""
    conn = ms.get_connection(address)
    await conn.request("msgr.ping", b"", timeout=30)
    return conn


async def _send_round(conn: Any, payload: bytes, seconds: float, idiom: str = "batch") -> int:
    """Send for ``seconds``, then END.  ``idiom`` (experiments only):
    ``batch`` = ``send_nowait`` x256 + ``await drain()`` (the suite's way for
    small messages), ``send`` = ``await conn.send()`` per message."""
    sent = 0
    deadline = perf_counter() + seconds
    if len(payload) < 65536 and idiom == "batch":
        send_nowait = conn.send_nowait
        while perf_counter() < deadline:
            for _ in range(BATCH):
                send_nowait("d", payload)
            sent += BATCH
            await conn.drain()
    else:
        send = conn.send
        while perf_counter() < deadline:
            await send("d", payload)
            sent += 1
    await conn.send("end")
    return sent


def oneway_receiver(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        ms = _messenger(_config("bench-rx", params, server=True, listen=[_listen_address(params["scheme"])]))
        counter = OnewayCounter(ctl)
        ms.register_handler_oneway("d", counter.on_msgr)
        ms.register_handler_oneway("end", counter.end)
        async with ms:
            ctl.send("ready", {"address": ms.addresses[0]})
            await ctl.serve_until_stop()

    run_async(main, params["loop"])


def oneway_sender(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        ms = _messenger(_config("bench-tx", params, server=False, transports=[params["scheme"]]))
        payload = payload_of(params["size"])
        async with ms:
            conn = await _open(ms, params["address"])
            idiom = params.get("idiom", "batch")
            await async_sender_loop(ctl, lambda seconds: _send_round(conn, payload, seconds, idiom))

    run_async(main, params["loop"])


class _LocalCounter(OnewayCounter):
    """In-process: keep the receiver's report until the sender adds its count."""

    __slots__ = ("done",)

    def __init__(self, ctl: Control) -> None:
        super().__init__(ctl)
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    def end(self, *_: Any) -> None:
        self.done.set_result(self.report())


def inprocess(ctl: Control, params: dict[str, Any]) -> None:
    """Sender and receiver messengers in one process and one event loop."""

    async def main() -> None:
        scheme = params["scheme"]
        rx = _messenger(_config("bench-rx", params, server=True, listen=[_listen_address(scheme)]))
        tx = _messenger(_config("bench-tx", params, server=False, transports=[scheme]))
        counter = _LocalCounter(ctl)
        rx.register_handler_oneway("d", counter.on_msgr)
        rx.register_handler_oneway("end", counter.end)
        payload = payload_of(params["size"])
        loop = asyncio.get_running_loop()
        async with rx, tx:
            conn = await _open(tx, rx.addresses[0])
            ctl.send("ready")
            while True:
                kind, info = await ctl.recv()
                if kind == "stop":
                    break
                counter.done = loop.create_future()
                sent = await _send_round(conn, payload, info["seconds"])
                res = await counter.done
                ctl.send("result", {**res, "sent": sent})

    run_async(main, params["loop"])


def reqrep_server(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        ms = _messenger(_config("bench-server", params, server=True, listen=[_listen_address(params["scheme"])]))
        ms.register_handler("echo", lambda msg: msg.payload)
        async with ms:
            ctl.send("ready", {"address": ms.addresses[0]})
            await ctl.serve_until_stop()

    run_async(main, params["loop"])


def reqrep_client(ctl: Control, params: dict[str, Any]) -> None:
    async def main() -> None:
        ms = _messenger(_config("bench-client", params, server=False, transports=[params["scheme"]]))
        payload = payload_of(params["size"])
        async with ms:
            conn = await _open(ms, params["address"])
            reply = await conn.request("echo", payload)
            if reply.payload != payload:
                raise BenchError("msgr echo returned a different payload")
            await reqrep_client_loop(ctl, functools.partial(conn.request, "echo"), params)

    run_async(main, params["loop"])
