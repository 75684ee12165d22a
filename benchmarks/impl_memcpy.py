"""``memcpy``: the in-process limit for large messages.

Copies a ``size``-byte buffer into a preallocated one of the same size
(``memoryview`` slice assignment, i.e. one ``memcpy``) as often as it can
for the round's duration.  Moving a message between processes can hardly
beat one copy of it, so this bounds what any transport can reach here.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from .common import payload_of
from .harness import Control


def copier(ctl: Control, params: dict[str, Any]) -> None:
    size = params["size"]
    src = memoryview(payload_of(size))
    dst = memoryview(bytearray(size))
    ctl.send("ready")
    while True:
        kind, info = ctl.recv_blocking()
        if kind == "stop":
            return
        n = 0
        t0 = perf_counter()
        deadline = t0 + info["seconds"]
        while True:
            dst[:] = src
            n += 1
            t = perf_counter()
            if t >= deadline:
                break
        ctl.send("result", {"msgs": n, "sent": n, "count": n, "bytes": n * size, "seconds": t - t0})
