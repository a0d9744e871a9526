#!/usr/bin/env python3
"""Fails when a crate's top-level modules import each other in a cycle (issue 13: "no import
cycle inside any crate"). A module's imports are the `crate::<module>` paths in its files
(submodules count for their top-level module), outside comments and `#[cfg(test)] mod tests`.
usage: scripts/check-import-cycles.py [DIR ...]   (default: crates bins benches)"""
import os
import re
import sys


def edges(src):
    graph = {}
    for dirpath, _, files in os.walk(src):
        for name in files:
            if not name.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), src)[:-3].split(os.sep)
            if rel[-1] in ("mod", "lib", "main"):
                rel = rel[:-1]
            module = rel[0] if rel else "lib"
            with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                text = re.split(r"#\[cfg\(test\)\]\s*mod tests", f.read())[0]
            for line in text.splitlines():
                if line.lstrip().startswith("//"):
                    continue
                for target in re.findall(r"\bcrate::(\w+)", line):
                    if target != module:
                        graph.setdefault(module, set()).add(target)
    return graph


def cycles(graph):
    found, seen = [], set()

    def walk(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                cycle = path[path.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            else:
                walk(nxt, path + [nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def main():
    roots = sys.argv[1:] or ["crates", "bins", "benches"]
    bad = 0
    for root in roots:
        dirs = [root] if os.path.isdir(os.path.join(root, "src")) else [
            os.path.join(root, d) for d in sorted(os.listdir(root))]
        for crate in dirs:
            src = os.path.join(crate, "src")
            if not os.path.isdir(src):
                continue
            for cycle in cycles(edges(src)):
                bad += 1
                print(f"{crate}: import cycle {' -> '.join(cycle)}")
    if bad:
        sys.exit(1)
    print("no import cycles between the modules of any crate")


if __name__ == "__main__":
    main()
