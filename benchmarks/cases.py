"""The cases, in the order they run, and the jobs each one is made of."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from . import hostile, impl_grpc, impl_memcpy, impl_msgr, impl_raw, impl_rdma, impl_zmq, scale, stuck
from .common import oneway_metrics, reqrep_metrics
from .harness import Job

__all__ = ["CASES", "Case", "available"]

NO_LOOP = "none"  # impls for which the event loop does not matter
KiB = 1024
MiB = 1024 * KiB


def available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Case:
    name: str
    title: str
    build: Callable[[list[str], bool], list[Job]]
    """``build(loops, quick)`` -> the case's jobs."""


def _msgr_impls(scheme: str) -> bool:
    return available("msgr_core") and available({"tcp": "msgr_tcp", "unix": "msgr_tcp",
                                                 "loop": "msgr_loopback", "zmq+tcp": "msgr_zmq"}[scheme])


def _policies() -> list[str]:
    """``lossy``, plus ``lossless`` once msgr_core accepts the lossless policies."""
    try:
        from msgr_core.config import load_config

        load_config({"policy": {"default": "lossless_client"}})
    except Exception:
        return ["lossy"]
    return ["lossy", "lossless"]


def _msgr_tcp_jobs(name: str, loop: str, sender: Callable[..., None], receiver: Callable[..., None],
                   metrics: Callable[..., list[tuple[str, str, float, bool]]], params: Mapping[str, object],
                   measured_by: str = "receiver") -> list[Job]:
    jobs = []
    if _msgr_impls("tcp"):
        jobs += [Job(name, f"msgr-tcp-{policy}", loop, sender, metrics, receiver, measured_by=measured_by,
                     params={**params, "scheme": "tcp", "policy": policy})
                 for policy in _policies()]
    if _msgr_impls("zmq+tcp") and "lossless" in _policies():
        # msgr over ZeroMQ, lossless: the row issue #4 compares with raw pyzmq
        jobs.append(Job(name, "msgr-zmq-lossless", loop, sender, metrics, receiver, measured_by=measured_by,
                        params={**params, "scheme": "zmq+tcp", "policy": "lossless"}))
    return jobs


def _oneway(name: str, size: int, small: bool) -> Callable[[list[str], bool], list[Job]]:
    def build(loops: list[str], quick: bool) -> list[Job]:
        p = {"size": size}
        jobs: list[Job] = []
        for loop in loops:
            jobs += _msgr_tcp_jobs(name, loop, impl_msgr.oneway_sender, impl_msgr.oneway_receiver, oneway_metrics, p)
            jobs.append(Job(name, "raw-asyncio", loop, impl_raw.oneway_sender, oneway_metrics,
                            impl_raw.oneway_receiver, params=p))
            if small and available("zmq"):
                jobs.append(Job(name, "raw-zmq-asyncio", loop, impl_zmq.asyncio_sender, oneway_metrics,
                                impl_zmq.asyncio_receiver, params=p))
            if small and _msgr_impls("loop"):
                jobs.append(Job(name, "msgr-loop-lossy", loop, impl_msgr.inprocess, oneway_metrics,
                                params={**p, "scheme": "loop", "policy": "lossy"},
                                note="in-process: both messengers share one process and one event loop"))
        if available("zmq"):
            jobs.append(Job(name, "raw-pyzmq", NO_LOOP, impl_zmq.blocking_sender, oneway_metrics,
                            impl_zmq.blocking_receiver, params=p,
                            note="" if small else "copy=False on both ends"))
        if not small:
            jobs.append(Job(name, "memcpy", NO_LOOP, impl_memcpy.copier, oneway_metrics, params=p,
                            note="in-process copy of one message into a preallocated buffer: the limit"))
        return jobs

    return build


def _reqrep(name: str, size: int, outstanding: int) -> Callable[[list[str], bool], list[Job]]:
    def build(loops: list[str], quick: bool) -> list[Job]:
        p = {"size": size, "outstanding": outstanding}
        jobs: list[Job] = []
        for loop in loops:
            jobs += _msgr_tcp_jobs(name, loop, impl_msgr.reqrep_client, impl_msgr.reqrep_server, reqrep_metrics, p,
                                   measured_by="sender")
            jobs.append(Job(name, "raw-asyncio", loop, impl_raw.reqrep_client, reqrep_metrics,
                            impl_raw.reqrep_server, measured_by="sender", params=p))
            if available("grpc"):
                jobs.append(Job(name, "grpcio", loop, impl_grpc.reqrep_client, reqrep_metrics,
                                impl_grpc.reqrep_server, measured_by="sender", params=p))
        return jobs

    return build


CASES: list[Case] = [
    Case("oneway-64B", "one-way 64 B messages, one connection", _oneway("oneway-64B", 64, small=True)),
    Case("reqrep-64B-1", "request/response 64 B, 1 outstanding", _reqrep("reqrep-64B-1", 64, 1)),
    Case("reqrep-64B-64", "request/response 64 B, 64 outstanding", _reqrep("reqrep-64B-64", 64, 64)),
    Case("oneway-1MiB", "one-way 1 MiB messages, one connection", _oneway("oneway-1MiB", MiB, small=False)),
    Case("oneway-16MiB", "one-way 16 MiB messages, one connection", _oneway("oneway-16MiB", 16 * MiB, small=False)),
    Case("scale", "1 -> 1000 connections to one messenger: idle memory and throughput", scale.build),
    Case("stuck-peer", "3 receivers' throughput while a 4th is healthy / SIGSTOPped", stuck.build),
    Case("hostile", "lossless stream throughput, unloaded / while 200 hostile clients attack the receiver",
         hostile.build),
    Case("rdma-64B", "msgr-rdma link: 64 B frames/s (emulated verbs; a device where one exists)",
         lambda loops, quick: impl_rdma.build("rdma-64B", 64, loops)),
    Case("rdma-1MiB", "msgr-rdma link: 1 MiB frames/s (emulated verbs; a device where one exists)",
         lambda loops, quick: impl_rdma.build("rdma-1MiB", MiB, loops)),
]
