"""A broadcast tree as an SVG picture (no graphviz, no dependency).

:func:`eager_tree` turns :meth:`Plumtree.get_tree`'s answer (every member's
eager/lazy sets) into a rooted tree along the *mutual* eager links;
:func:`tree_svg` draws any rooted tree ``{parent: [children]}`` — that one,
or a broadcast's delivery tree (``sim.Cluster.children``) — with a radial
layout: the root in the centre, each hop one ring further out, every leaf
its own angle and each inner node at the mean angle of its children.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["eager_tree", "tree_svg"]


def eager_tree(tree: Mapping[str, Any], root: str) -> tuple[dict[str, list[str]], list[str], list[str]]:
    """``(children, unlinked, down)`` from a ``get_tree`` / ``pt.tree``
    answer ``{node: (eager, lazy) | "down"}``: a breadth-first spanning tree
    of the mutual eager links from ``root``, the members it does not reach,
    and the members that did not answer."""
    eager = {n: set(v[0]) for n, v in tree.items() if not isinstance(v, str)}
    children: dict[str, list[str]] = {}
    seen = {root}
    frontier = [root]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(eager.get(node, ())):
                if child not in seen and node in eager.get(child, ()):
                    seen.add(child)
                    children.setdefault(node, []).append(child)
                    nxt.append(child)
        frontier = nxt
    unlinked = sorted(set(eager) - seen)
    down = sorted(n for n, v in tree.items() if isinstance(v, str))
    return children, unlinked, down


def tree_svg(children: Mapping[str, Iterable[str]], root: str, *, title: str = "",
             extra: Iterable[str] = (), labels: bool | None = None, ring: float = 60.0) -> str:
    """The tree ``{parent: [children]}`` rooted at ``root`` as an SVG document.

    :param extra: nodes outside the tree (unlinked, down), listed under
        the picture.
    :param labels: name every node (default: when the tree has at most 150).
    :param ring: pixels between two hop counts.
    """
    kids = {p: sorted(c) for p, c in children.items()}
    depth = {root: 0}
    order: list[str] = []  # leaves, depth-first
    stack = [root]
    seen = {root}
    while stack:
        node = stack.pop()
        below = [c for c in kids.get(node, []) if c not in seen]
        if not below:
            order.append(node)
        for c in reversed(below):
            seen.add(c)
            depth[c] = depth[node] + 1
            stack.append(c)
    angle: dict[str, float] = {leaf: 2 * math.pi * i / max(1, len(order)) for i, leaf in enumerate(order)}

    def place(node: str) -> float:
        if node not in angle:
            below = [c for c in kids.get(node, []) if depth.get(c) == depth[node] + 1]
            angle[node] = sum(place(c) for c in below) / len(below) if below else 0.0
        return angle[node]

    # (recursion as deep as the tree is high: hops, not nodes)
    place(root)
    n = len(depth)
    show = labels if labels is not None else n <= 150
    radius = ring * max(depth.values(), default=0)
    margin = 40.0 + (40.0 if show else 0.0)
    size = 2 * (radius + margin)
    c0 = size / 2

    def xy(node: str) -> tuple[float, float]:
        r = ring * depth[node]
        a = angle[node]
        return c0 + r * math.cos(a), c0 + r * math.sin(a)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size:.0f}" height="{size + 40:.0f}" '
           f'viewBox="0 0 {size:.0f} {size + 40:.0f}" font-family="sans-serif" font-size="10">',
           '<rect width="100%" height="100%" fill="white"/>']
    for d in range(1, max(depth.values(), default=0) + 1):
        out.append(f'<circle cx="{c0:.1f}" cy="{c0:.1f}" r="{ring * d:.1f}" fill="none" stroke="#eee"/>')
    for parent, cs in kids.items():
        if parent not in depth:
            continue
        x1, y1 = xy(parent)
        for c in cs:
            if c in depth and depth[c] == depth[parent] + 1:
                x2, y2 = xy(c)
                out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#888"/>')
    dot = 4.0 if n <= 150 else 2.0
    for node in depth:
        x, y = xy(node)
        fill = "#d62728" if node == root else "#1f77b4"
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{dot * (1.6 if node == root else 1)}" fill="{fill}">'
                   f'<title>{escape(node)} (hop {depth[node]})</title></circle>')
        if show:
            out.append(f'<text x="{x + 5:.1f}" y="{y - 5:.1f}">{escape(node)}</text>')
    caption = title or f"tree rooted at {root}"
    caption += f" - {n} nodes, {max(depth.values(), default=0)} hops"
    rest = sorted(set(extra) - set(depth))
    if rest:
        caption += f"; not in the tree: {', '.join(rest[:20])}{' ...' if len(rest) > 20 else ''}"
    out.append(f'<text x="10" y="{size + 25:.0f}" font-size="12">{escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
