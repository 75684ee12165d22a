"""Coverage-guided fuzzing of what a hostile peer controls, with atheris.

    pip install atheris                     # not a test dependency
    python fuzz/fuzz_msgr.py -max_total_time=600 fuzz/corpus

``test_one_input(data)`` is the target.  Its first byte picks what the rest
feeds:

- even: the stream decoder (``msgr_core.framing.StreamDecoder``), the rest
  cut into chunks at points taken from the data itself;
- odd: an accepting session's handshake state machine: the rest is decoded
  as a stream of frames (no banner) and each frame is handed to a fresh
  incoming session (``Connection`` + its link port, over an in-memory link)
  of a messenger that requires authentication.

Anything but the typed errors a peer may cause (``ProtocolError``,
``FrameTooLarge``) escaping is a bug, and so is a verb handler running.
The target runs without atheris too (``tests/test_sec_fuzz.py`` does, so
it cannot rot).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

from msgr_core import Messenger
from msgr_core.auth import generate_key
from msgr_core.connection import _Port
from msgr_core.errors import FrameTooLarge, LinkClosed, ProtocolError
from msgr_core.framing import StreamDecoder
from msgr_core.transport import Buffer, Frame, Link

try:  # pragma: no cover - only for long fuzzing runs
    import atheris
except ImportError:
    atheris = None

MAX_FRAME = 64 * 1024


class MemoryLink(Link):
    """A link that goes nowhere: records what the session sends."""

    def __init__(self) -> None:
        self.sent: list[Frame] = []
        self.closed = False
        self.peer_address = "mem://fuzzer"
        self.local_address = "mem://server"
        self.port: _Port | None = None

    def send(self, frame: Frame) -> None:
        if self.closed:
            raise LinkClosed()
        self.sent.append(frame)

    def write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.port is not None:
                self.port.link_lost(None)

    def is_closing(self) -> bool:
        return self.closed


class _Harness:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ms = Messenger.from_config({"messenger": {"name": "fuzz-server"},
                                         "auth": {"cluster_key": generate_key()},
                                         "limits": {"max_frame_bytes": MAX_FRAME}})
        self.calls = 0

        def handler(msg: Any) -> None:
            self.calls += 1

        for verb in ("", "a", "msgr.ping"):
            self.ms.register_handler(verb, handler)
            self.ms.register_handler_oneway(verb, handler)
        self.loop.run_until_complete(self.ms.start())

    def handshake(self, data: bytes) -> None:
        frames: list[list[Buffer]] = []
        dec = StreamDecoder(frames.append, MAX_FRAME, expect_banner=False)
        with contextlib.suppress(ProtocolError, FrameTooLarge):
            dec.feed(data)
        port = self.ms._new_incoming()
        link = MemoryLink()
        if isinstance(port, _Port):
            link.port = port
        port.link_made(link)
        for frame in frames:
            if link.closed:
                break
            port.frame_received(frame)
        link.abort()
        self.loop.run_until_complete(asyncio.sleep(0))  # let call_soon'd work run
        if self.calls:
            raise AssertionError("a verb ran for an unauthenticated peer")
        if self.ms._accepted or self.ms.connections:
            raise AssertionError("a rejected link left state behind")


_harness: _Harness | None = None


def _decoder(data: bytes) -> None:
    frames: list[list[Buffer]] = []
    dec = StreamDecoder(frames.append, MAX_FRAME, buffer_size=8192, direct_threshold=2048)
    cuts = sorted({b * 17 % (len(data) + 1) for b in data[:16]})
    last = 0
    try:
        for cut in [*cuts, len(data)]:
            dec.feed(data[last:cut])
            last = cut
    except (ProtocolError, FrameTooLarge):
        return
    if dec.pending > MAX_FRAME + 6 + 4 * 1024:
        raise AssertionError(f"decoder holds {dec.pending} bytes")


def test_one_input(data: bytes) -> None:
    """The fuzz target (see the module docstring)."""
    global _harness
    if not data:
        return
    if data[0] % 2 == 0:
        _decoder(data[1:])
        return
    if _harness is None:
        _harness = _Harness()
    _harness.handshake(data[1:])


def shutdown() -> None:
    """Stop the handshake harness's messenger and close its event loop."""
    global _harness
    h, _harness = _harness, None
    if h is not None:
        h.loop.run_until_complete(h.ms.stop())
        h.loop.close()


def main() -> None:  # pragma: no cover - needs atheris
    if atheris is None:
        sys.exit("atheris is not installed: pip install atheris")
    logging.getLogger("msgr").setLevel(logging.CRITICAL)  # every rejected input logs a warning
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main()
