"""Workers for ``grpcio``: asyncio unary calls with generic handlers, no codegen.

The method ``/bench.Bench/Echo`` is registered with
:func:`grpc.method_handlers_generic_handler` and
:func:`grpc.unary_unary_rpc_method_handler` without (de)serializers, so
requests and replies are the raw ``bytes`` — no protobuf cost on either side.
"""

from __future__ import annotations

from typing import Any

from .common import payload_of, reqrep_client_loop
from .harness import BenchError, Control, run_async

METHOD = "/bench.Bench/Echo"


def reqrep_server(ctl: Control, params: dict[str, Any]) -> None:
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Bench", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ctl.send("ready", {"grpc_target": f"127.0.0.1:{port}"})
        await ctl.serve_until_stop()
        await server.stop(None)

    run_async(main, params["loop"])


def reqrep_client(ctl: Control, params: dict[str, Any]) -> None:
    import grpc

    async def main() -> None:
        async with grpc.aio.insecure_channel(params["grpc_target"]) as channel:
            call = channel.unary_unary(METHOD)
            payload = payload_of(params["size"])
            if await call(payload) != payload:
                raise BenchError("grpc echo returned a different payload")
            await reqrep_client_loop(ctl, call, params)

    run_async(main, params["loop"])
