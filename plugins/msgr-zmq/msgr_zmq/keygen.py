"""Make CURVE keys for msgr-zmq: ``python -m msgr_zmq.keygen [--server]``.

Prints a ``[zmq]`` section to paste into a node's config, with a fresh
keypair from ``zmq.curve_keypair()`` (libsodium)::

    $ python -m msgr_zmq.keygen --server
    [zmq]
    curve_server = true
    curve_secretkey = "..."   # keep secret
    curve_publickey = "..."   # give to peers (their curve_serverkey / curve_serverkeys)

Whoever has a listener's secret key can pose as that listener: keep it
out of version control and readable by the node's user only.

Without ``--server`` it prints a client keypair (``curve_secretkey`` and
``curve_publickey``, to which a client adds the listener's public key as
``curve_serverkey``).  One keypair used as both (``--server``, and nothing
else on every node) is the simplest cluster setup: every node serves with
it and, with ``curve_serverkey`` left empty, dials with it.
"""

from __future__ import annotations

import argparse
import sys

import zmq

__all__ = ["keypair_toml", "main"]


def keypair_toml(*, server: bool) -> str:
    """A ``[zmq]`` TOML section with a fresh CURVE keypair.

    :raises RuntimeError: this libzmq has no CURVE (built without libsodium).
    """
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE (libsodium) support")
    public, secret = zmq.curve_keypair()
    lines = ["[zmq]"]
    if server:
        lines.append("curve_server = true")
    lines += [
        f'curve_secretkey = "{secret.decode()}"   # keep secret',
        f'curve_publickey = "{public.decode()}"   # give to peers (their curve_serverkey / curve_serverkeys)',
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msgr_zmq.keygen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", action="store_true", help="a listener's keypair (adds curve_server = true)")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(keypair_toml(server=args.server))
    except RuntimeError as exc:
        print(f"msgr_zmq.keygen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
