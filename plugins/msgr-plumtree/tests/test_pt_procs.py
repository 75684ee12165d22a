"""Real processes over TCP: five Plumtree nodes; a broadcast reaches all;
after one is killed, the others still all deliver; a node that joins later
gets the messages it missed by anti-entropy; ``msgr plumtree tree``."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

NODE = Path(__file__).parent / "pt_node.py"


class Node:
    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.addr = ""
        self.got: dict[str, str] = {}

    async def line(self) -> list[str]:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        assert raw, f"{self.name} exited"
        return raw.decode().split()

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((text + "\n").encode())

    async def wait_for(self, *msg_ids: str) -> None:
        while not all(m in self.got for m in msg_ids):
            words = await self.line()
            if words[0] == "got":
                self.got[words[1]] = words[2]


async def test_pt_five_processes_over_tcp_broadcast_kill_and_anti_entropy() -> None:
    nodes = []
    try:
        for i in range(5):
            proc = await asyncio.create_subprocess_exec(sys.executable, str(NODE), f"p{i}",
                                                        stdin=asyncio.subprocess.PIPE,
                                                        stdout=asyncio.subprocess.PIPE)
            nodes.append(Node(f"p{i}", proc))
        for n in nodes:
            words = await asyncio.wait_for(n.line(), 30)
            assert words[0] == "addr"
            n.addr = words[1]
        peers = json.dumps({n.name: n.addr for n in nodes})
        for n in nodes:
            n.send(f"peers {peers}")
        nodes[0].send("bcast hello")
        await asyncio.wait_for(asyncio.gather(*(n.wait_for("p0:0") for n in nodes[1:])), 30)
        assert all(n.got["p0:0"] == "hello" for n in nodes[1:])

        # msgr plumtree tree: p3 collects p0's tree from every member
        out = await _cli("plumtree", "tree", nodes[3].addr, "--root", "p0", "--json")
        reply = json.loads(out)
        assert reply["root"] == "p0" and reply["node"] == "p3"
        assert sorted(reply["tree"]) == [n.name for n in nodes]
        eager = {n: set(v[0]) for n, v in reply["tree"].items()}
        mutual = {frozenset((a, b)) for a, es in eager.items() for b in es if a in eager[b]}
        assert len(mutual) >= len(nodes) - 1  # a spanning tree (plus links whose prune is in flight)
        text = await _cli("plumtree", "tree", nodes[3].addr, "--root", "p0")
        assert text.splitlines()[0] == "tree rooted at p0 (as collected by p3)"
        assert {line.strip() for line in text.splitlines()[1:6]} == {n.name for n in nodes}

        victim = nodes[2]
        victim.proc.kill()
        await victim.proc.wait()
        live = [n for n in nodes if n is not victim]
        for i in range(1, 4):
            nodes[0].send(f"bcast m{i}")
            await asyncio.wait_for(asyncio.gather(*(n.wait_for(f"p0:{i}") for n in live[1:])), 30)
        assert all(n.got[f"p0:{i}"] == f"m{i}" for n in live[1:] for i in range(1, 4))

        # a latecomer: nothing is broadcast after it joins, so only the
        # exchange (every second here) can bring it the four messages
        proc = await asyncio.create_subprocess_exec(sys.executable, str(NODE), "p5",
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        late = Node("p5", proc)
        nodes.append(late)
        words = await asyncio.wait_for(late.line(), 30)
        late.addr = words[1]
        peers = json.dumps({n.name: n.addr for n in [*live, late]})
        for n in [*live, late]:
            n.send(f"peers {peers}")
        await asyncio.wait_for(late.wait_for(*(f"p0:{i}" for i in range(4))), 30)
        assert late.got == {"p0:0": "hello", "p0:1": "m1", "p0:2": "m2", "p0:3": "m3"}
    finally:
        for n in nodes:
            if n.proc.returncode is None and n.proc.stdin is not None:
                n.proc.stdin.close()  # a graceful stop
        await asyncio.gather(*(_reap(n) for n in nodes))


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "msgr_core.cli", *args,
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out.decode()


async def _reap(n: Node) -> None:
    try:
        await asyncio.wait_for(n.proc.wait(), 10)
    except TimeoutError:
        n.proc.kill()
        await n.proc.wait()
