#!/usr/bin/env python3
"""Flame graphs of Skein's processes from `perf script` output, standard library only.

Reads `perf script -F comm,pid,tid,time,event,ip,sym` text (call stacks recorded with
`perf record --call-graph dwarf`) on standard input and writes one SVG per process named in
--pid LABEL=PID (or one for the whole machine without --pid), plus a folded-stack text file
beside each (one line per distinct stack, "frame;frame;... count", the format other flame
graph tools read). Frames under --min-percent of a graph's samples are dropped; generic arguments are left out of names.

Usage: perf script -i perf.data -F comm,pid,tid,time,event,ip,sym |
       loadtest/flamegraph.py --out DIR [--title T] [--pid leader=123 ...] [--min-percent 0.5]
"""

import argparse
import collections
import html
import os
import re
import sys

WIDTH = 1600
ROW = 16
FONT = 11


def clean(sym):
    """A frame's name without offsets, hashes and the DSO in brackets."""
    sym = re.sub(r"\+0x[0-9a-f]+", "", sym)
    sym = re.sub(r" \((?:inlined|[^)]*)\)$", "", sym)
    sym = re.sub(r"::h[0-9a-f]{16}$", "", sym)
    # Generic arguments make names kilobytes long; the path names the frame well enough.
    while True:
        shorter = re.sub(r"<[^<>]*>", "", sym)
        if shorter == sym:
            break
        sym = shorter
    return sym.replace(";", ":")[:120] or "[unknown]"


def stacks(lines):
    """(pid, frames root first: the thread's name, then its stack) for every sample."""
    pid, comm, frames = None, "", []
    for line in lines:
        if not line.strip():
            if pid is not None:
                yield pid, [comm] + frames[::-1]
            pid, frames = None, []
        elif line[0] in " \t":
            parts = line.strip().split(" ", 1)
            if len(parts) == 2:
                frames.append(clean(parts[1]))
        else:
            fields = line.split()
            pid = fields[1].split("/")[0] if len(fields) > 1 else "?"
            comm, frames = fields[0], []
    if pid is not None:
        yield pid, [comm] + frames[::-1]


def tree(folded):
    """Nested {name: [count, children]} from folded stacks."""
    root = [0, {}]
    for stack, n in folded.items():
        node = root
        node[0] += n
        for f in stack:
            node = node[1].setdefault(f, [0, {}])
            node[0] += n
    return root


def colour(name):
    h = sum(map(ord, name)) % 60
    if name.startswith("skein"):
        return f"rgb(230,{120 + h},40)"
    if "rocksdb" in name:
        return f"rgb(90,{140 + h},200)"
    return f"rgb(220,{80 + h},{60 + h // 2})"


def svg(root, title, min_frac):
    total = root[0]
    rects = []
    depth_max = 0

    def walk(node, x, depth):
        nonlocal depth_max
        for name, child in sorted(node[1].items()):
            n = child[0]
            if n / total >= min_frac:
                w = n / total * WIDTH
                depth_max = max(depth_max, depth)
                rects.append((x, depth, w, name, n))
                walk(child, x, depth + 1)
            x += n / total * WIDTH

    walk(root, 0.0, 0)
    height = (depth_max + 3) * ROW
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="monospace" font-size="{FONT}">',
        f'<text x="4" y="{ROW - 3}">{html.escape(title)} ({total} samples; hover for '
        f"names and shares)</text>",
    ]
    for x, depth, w, name, n in rects:
        y = height - (depth + 1) * ROW
        label = name if len(name) * FONT * 0.6 < w else name[: max(0, int(w / (FONT * 0.6)) - 2)]
        tip = f"{name} ({n} samples, {100 * n / total:.1f}%)"
        out.append(
            f'<g><title>{html.escape(tip)}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
            f'height="{ROW - 1}" fill="{colour(name)}"/>'
            + (f'<text x="{x + 2:.1f}" y="{y + ROW - 4}">{html.escape(label)}</text>' if len(label) > 2 else "")
            + "</g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="skein")
    ap.add_argument("--pid", action="append", default=[], help="LABEL=PID")
    ap.add_argument("--min-percent", type=float, default=0.5)
    a = ap.parse_args()
    wanted = dict(p.split("=", 1)[::-1] for p in a.pid)  # pid -> label
    folded = collections.defaultdict(collections.Counter)
    for pid, frames in stacks(sys.stdin):
        if wanted:
            if pid in wanted:
                folded[wanted[pid]][tuple(frames)] += 1
        else:
            folded["machine"][tuple(frames)] += 1
    os.makedirs(a.out, exist_ok=True)
    for label, f in sorted(folded.items()):
        base = os.path.join(a.out, f"{a.title}-{label}")
        with open(base + ".folded", "w") as w:
            for stack, n in f.most_common():
                w.write(";".join(stack) + f" {n}\n")
        with open(base + ".svg", "w") as w:
            w.write(svg(tree(f), f"{a.title}: {label}", a.min_percent / 100))
        print(f"{base}.svg ({sum(f.values())} samples)")


if __name__ == "__main__":
    main()
