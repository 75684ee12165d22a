"""A blocking facade over :class:`~msgr_core.Messenger` for code that is not async.

::

    from msgr_core.sync import SyncMessenger

    with SyncMessenger.from_config("node.toml") as ms:
        ms.register_handler("add", lambda msg: msg.payload["x"] + msg.payload["y"])
        print(ms.send_message("add", "tcp://127.0.0.1:6800", {"x": 2, "y": 3}, timeout=5))

Contract:

- The messenger runs on an event loop in a background thread owned by the
  facade (one thread per :class:`SyncMessenger`).  Every method blocks the
  calling thread until the loop has done the work, and returns its result.
- Errors are the messenger's own, unchanged: ``send_message`` raises
  :class:`~msgr_core.errors.RequestTimeout`,
  :class:`~msgr_core.errors.RemoteError`,
  :class:`~msgr_core.errors.PeerUnreachable`, ... exactly as the async
  method does (the very exception object, traceback included).
- Handlers may be plain functions or coroutine functions.  Coroutine
  functions run on the loop, as with :class:`~msgr_core.Messenger`.  Plain
  functions run in the facade's handler thread pool (``handler_threads``,
  default 1: handlers run one at a time, in arrival order), never on the
  loop thread, so a handler may block and may call this facade itself.
- Calling a blocking method from the loop thread (from a coroutine handler,
  a dispatcher or a hook) would wait for the loop that is waiting for it: it
  raises :class:`LoopThreadError` at once instead.  Use the async
  :attr:`SyncMessenger.messenger` there.
- Shutdown is clean: :meth:`SyncMessenger.stop` (or leaving the ``with``
  block) stops the messenger gracefully, stops the loop, joins its thread
  and closes the loop; it is idempotent.  A facade still running when the
  interpreter exits is stopped by an ``atexit`` handler (its thread is a
  daemon, so a forgotten ``stop()`` never hangs the exit).
- Ctrl-C (or any exception) while a call waits cancels the work on the loop
  before it propagates.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from .config import Config
from .connection import Connection
from .errors import MessengerError, MessengerStopped
from .message import Message, Priority
from .messenger import Messenger
from .transport import Buffer

__all__ = ["LoopThreadError", "SyncConnection", "SyncMessenger"]

T = TypeVar("T")
Handler = Callable[[Message], Any]


class LoopThreadError(MessengerError, RuntimeError):
    """A blocking method was called on the facade's own event loop thread,
    where it could only deadlock.  Use the async messenger there."""


class SyncMessenger:
    """A :class:`~msgr_core.Messenger` driven from blocking code.

    :param messenger: the messenger to drive (not started); it belongs to the
        facade from now on, and must only be used from its loop thread
        (:attr:`messenger`).
    :param start: start it now (listen, call the extensions); otherwise call
        :meth:`start` (or use ``with``).
    :param handler_threads: threads that run plain-function handlers; 1 (the
        default) keeps them in arrival order.
    :raises OSError: ``start`` could not bind a listen address (the thread is
        already stopped again).
    """

    def __init__(self, messenger: Messenger, *, start: bool = True, handler_threads: int = 1) -> None:
        if handler_threads < 1:
            raise ValueError(f"handler_threads must be at least 1, got {handler_threads}")
        self._ms = messenger
        self._loop = asyncio.new_event_loop()
        self._stopped = False
        self._lock = threading.Lock()
        self._worker_ids: set[int] = set()
        self._handlers = concurrent.futures.ThreadPoolExecutor(
            max_workers=handler_threads,
            thread_name_prefix=f"msgr-sync-handler-{messenger.name}",
            initializer=lambda: self._worker_ids.add(threading.get_ident()),
        )
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, args=(ready,), name=f"msgr-sync-loop-{messenger.name}", daemon=True
        )
        self._thread.start()
        ready.wait()
        # A weak reference: the atexit registry must not keep the facade alive.
        self._atexit = _AtExit(weakref.ref(self))
        atexit.register(self._atexit)
        if start:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise

    @classmethod
    def from_config(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any] | Config,
        *,
        start: bool = True,
        handler_threads: int = 1,
    ) -> SyncMessenger:
        """A facade over ``Messenger.from_config(source)``.

        :raises ConfigError: the config is wrong.
        :raises PluginNotInstalled: a selected plugin is missing.
        :raises OSError: an address cannot be bound (with ``start=True``).
        """
        return cls(Messenger.from_config(source), start=start, handler_threads=handler_threads)

    def _run_loop(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    # -- running work on the loop ------------------------------------------------

    def _check_thread(self) -> None:
        if threading.get_ident() == self._thread.ident:
            raise LoopThreadError(
                f"a blocking SyncMessenger method was called on its own event loop thread "
                f"(messenger {self._ms.name}); await the async messenger (SyncMessenger.messenger) there"
            )
        if self._stopped:
            raise _stopped_error(self._ms.name)

    def _wait(self, fut: concurrent.futures.Future[T]) -> T:
        try:
            return fut.result()
        except BaseException:
            # Ctrl-C (or anything else) while waiting: don't leave the work running.
            fut.cancel()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception)."""
        try:
            self._check_thread()
        except BaseException:
            coro.close()
            raise
        return self._wait(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call a plain function on the loop thread and return its result."""
        self._check_thread()
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if not fut.set_running_or_notify_cancel():
                return
            try:
                fut.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return self._wait(fut)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def messenger(self) -> Messenger:
        """The async messenger underneath: use it only on :attr:`loop`'s thread."""
        return self._ms

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the messenger runs on (in the facade's thread)."""
        return self._loop

    @property
    def name(self) -> str:
        return self._ms.name

    @property
    def running(self) -> bool:
        return not self._stopped and self._ms.running

    @property
    def addresses(self) -> list[str]:
        """The addresses actually bound (port 0 resolved)."""
        return self._call(lambda: self._ms.addresses)

    def start(self) -> None:
        """Start the messenger (idempotent).

        :raises OSError: a listen address cannot be bound.
        """
        self._run(self._ms.start())

    def stop(self) -> None:
        """Stop gracefully (flush, goodbye), then stop and join the loop
        thread.  Idempotent; safe from any thread but the loop's.

        :raises LoopThreadError: called on the loop thread.
        """
        if threading.get_ident() == self._thread.ident:
            raise LoopThreadError(f"SyncMessenger.stop() called on its own loop thread (messenger {self._ms.name})")
        with self._lock:
            if self._stopped:
                return
            try:
                if self._thread.is_alive():
                    self._wait(asyncio.run_coroutine_threadsafe(self._ms.stop(), self._loop))
            finally:
                self._stopped = True
                atexit.unregister(self._atexit)
                self._shutdown_loop()
                in_worker = threading.get_ident() in self._worker_ids
                self._handlers.shutdown(wait=not in_worker, cancel_futures=True)

    def _shutdown_loop(self) -> None:
        if self._thread.is_alive():

            async def drain() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await self._loop.shutdown_asyncgens()

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(drain(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        if not self._loop.is_closed():
            self._loop.close()

    def __enter__(self) -> SyncMessenger:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ------------------------------------------------------------------

    def _wrap(self, fn: Handler) -> Handler:
        if inspect.iscoroutinefunction(fn):
            return fn
        handlers = self._handlers
        loop = self._loop

        async def in_thread(msg: Message) -> Any:
            return await loop.run_in_executor(handlers, fn, msg)

        return in_thread

    def register_handler(self, verb: str, fn: Handler) -> None:
        """Handle requests for ``verb``: ``fn(msg)`` returns the reply (or
        raises: the caller gets ``RemoteError``).  A plain function runs in
        the handler threads; a coroutine function on the loop."""
        self._call(self._ms.register_handler, verb, self._wrap(fn))

    def register_handler_oneway(self, verb: str, fn: Handler) -> None:
        """Handle oneway messages for ``verb`` (same threading as
        :meth:`register_handler`)."""
        self._call(self._ms.register_handler_oneway, verb, self._wrap(fn))

    def unregister_handler(self, verb: str) -> None:
        """Remove ``verb``'s handlers."""
        self._call(self._ms.unregister_handler, verb)

    # -- verbs -----------------------------------------------------------------------

    def send_message(
        self,
        verb: str,
        peer: str,
        payload: Any = b"",
        *,
        timeout: float | None = None,
        attachments: Sequence[Buffer] = (),
        priority: int = Priority.NORMAL,
    ) -> Any:
        """Call ``verb`` on ``peer``, block until the reply, return its payload.

        :raises RequestTimeout, RemoteError, UnknownVerb, ConnectionReset, PeerUnreachable:
            as :meth:`Messenger.send_message <msgr_core.Messenger.send_message>`.
        """
        return self._run(
            self._ms.send_message(verb, peer, payload, timeout=timeout, attachments=attachments, priority=priority)
        )

    def request(
        self,
        verb: str,
        peer: str,
        payload: Any = b"",
        *,
        timeout: float | None = None,
        attachments: Sequence[Buffer] = (),
        priority: int = Priority.NORMAL,
    ) -> Message:
        """Like :meth:`send_message`, returning the whole reply :class:`~msgr_core.message.Message`."""
        return self._run(
            self._ms.request(verb, peer, payload, timeout=timeout, attachments=attachments, priority=priority)
        )

    def send_message_oneway(
        self,
        verb: str,
        peer: str,
        payload: Any = b"",
        *,
        attachments: Sequence[Buffer] = (),
        priority: int = Priority.NORMAL,
    ) -> None:
        """Queue a oneway message to ``peer``; blocks only while its queue is full."""
        self._run(self._ms.send_message_oneway(verb, peer, payload, attachments=attachments, priority=priority))

    def send(
        self,
        verb: str,
        payload: Any,
        recipients: Iterable[str],
        *,
        attachments: Sequence[Buffer] = (),
        priority: int = Priority.NORMAL,
    ) -> set[str]:
        """One oneway message to several peers; returns those it could not be queued for."""
        recipients = list(recipients)
        return self._call(self._ms.send, verb, payload, recipients, attachments=attachments, priority=priority)

    def get_connection(self, peer: str, *, policy: str | None = None) -> SyncConnection:
        """The session with ``peer`` (dialled in the background if new).

        :raises PeerUnreachable, MessengerStopped: as :meth:`Messenger.get_connection
            <msgr_core.Messenger.get_connection>`.
        """
        return SyncConnection(self, self._call(self._ms.get_connection, peer, policy=policy))

    def install_view(self, members: Iterable[str]) -> None:
        """Install the current members (see :meth:`Messenger.install_view <msgr_core.Messenger.install_view>`)."""
        self._call(self._ms.install_view, list(members))

    def add_known_address(self, name: str, addrs: Iterable[str]) -> None:
        """Learn where entity ``name`` listens."""
        self._call(self._ms.add_known_address, name, list(addrs))

    @property
    def stats(self) -> dict[str, Any]:
        """The messenger's counters (a snapshot taken on the loop thread)."""
        return self._call(lambda: self._ms.stats)


class SyncConnection:
    """The blocking view of one :class:`~msgr_core.connection.Connection`."""

    def __init__(self, owner: SyncMessenger, conn: Connection) -> None:
        self._owner = owner
        self._conn = conn

    @property
    def connection(self) -> Connection:
        """The async connection underneath (loop thread only)."""
        return self._conn

    @property
    def peer_name(self) -> str:
        return self._owner._call(lambda: self._conn.peer_name)

    @property
    def peer_addrs(self) -> tuple[str, ...]:
        return tuple(self._owner._call(lambda: self._conn.peer_addrs))

    @property
    def is_open(self) -> bool:
        return self._owner._call(lambda: self._conn.is_open)

    @property
    def stats(self) -> dict[str, Any]:
        return self._owner._call(lambda: self._conn.stats)

    def send(
        self, verb: str, payload: Any = b"", *, attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL
    ) -> None:
        """Queue a oneway message; blocks while the session's queue is full."""
        self._owner._run(self._conn.send(verb, payload, attachments=attachments, priority=priority))

    def send_nowait(
        self, verb: str, payload: Any = b"", *, attachments: Sequence[Buffer] = (), priority: int = Priority.NORMAL
    ) -> None:
        """Queue a oneway message or raise :class:`~msgr_core.errors.Backpressure`."""
        self._owner._call(self._conn.send_nowait, verb, payload, attachments=attachments, priority=priority)

    def request(
        self,
        verb: str,
        payload: Any = b"",
        *,
        timeout: float | None = None,
        attachments: Sequence[Buffer] = (),
        priority: int = Priority.NORMAL,
    ) -> Message:
        """Call ``verb`` on this peer and return the reply message."""
        return self._owner._run(
            self._conn.request(verb, payload, timeout=timeout, attachments=attachments, priority=priority)
        )

    def drain(self) -> None:
        """Block until everything queued has been handed to the link."""
        self._owner._run(self._conn.drain())

    def mark_down(self) -> None:
        """Close the session now (see :meth:`Connection.mark_down <msgr_core.connection.Connection.mark_down>`)."""
        self._owner._call(self._conn.mark_down)


class _AtExit:
    """Stops a facade still running at interpreter exit (weakly referenced)."""

    def __init__(self, ref: weakref.ref[SyncMessenger]) -> None:
        self._ref = ref

    def __call__(self) -> None:
        facade = self._ref()
        if facade is not None:
            facade.stop()


def _stopped_error(name: str) -> MessengerError:
    return MessengerStopped(f"SyncMessenger for {name} is stopped")
