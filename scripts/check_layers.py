#!/usr/bin/env python3
"""Fails when a file under src/kiln/<layer>/ includes a layer it must not.

The one source of truth is the layer table in docs/ARCHITECTURE.md: its "layer" column names the
layers and its "may use" column the layers each may include ("—" none, "everything" all, a
parenthesized name such as "(cuda)" a layer used only in some builds). Use is transitive: a layer
may include whatever the layers it uses may include. Every `#include "kiln/<layer>/..."` in
src/kiln/** (.h, .cpp, .cu, .cuh, .inc) is checked, headers too.

usage: check_layers.py [--root DIR] [--doc FILE]   (defaults: this repository, DIR/docs/ARCHITECTURE.md)
exit status: 0 clean, 1 forbidden includes (each printed as file:line: ...), 2 unreadable table.
"""
import argparse
import os
import re
import sys

SOURCE_EXTS = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh", ".inc")
INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"kiln/([A-Za-z0-9_]+)/')


def parse_table(doc_path):
    """Returns {layer: set of layers it may use directly} from the doc's layer table."""
    with open(doc_path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    rows, header = {}, None
    for line in lines:
        if not line.startswith("|"):
            if header is not None and rows:
                break  # the table ended
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            if cells and cells[0] == "layer" and "may use" in cells:
                header = cells
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the |---|---| separator
        layer = cells[0].strip("`")
        uses = cells[header.index("may use")]
        rows[layer] = uses
    if not rows:
        raise ValueError(f"{doc_path}: no table with a 'layer' and a 'may use' column")
    allowed = {}
    for layer, uses in rows.items():
        if uses in ("—", "-", ""):
            allowed[layer] = set()
        elif uses == "everything":
            allowed[layer] = set(rows) - {layer}
        else:
            names = re.findall(r"[A-Za-z0-9_]+", uses)
            unknown = [n for n in names if n not in rows]
            if unknown:
                raise ValueError(f"{doc_path}: layer '{layer}' may use unknown layer(s) {unknown}")
            allowed[layer] = set(names)
    return allowed


def closure(allowed):
    """Transitive closure: a layer may include what its allowed layers may include."""
    full = {}
    for layer in allowed:
        seen, stack = set(), list(allowed[layer])
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(allowed.get(dep, ()))
        full[layer] = seen - {layer}
    return full


def check(root, allowed):
    """Yields (path, line number, layer, included layer) for every forbidden include."""
    src = os.path.join(root, "src", "kiln")
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, src)
        if rel == ".":
            continue
        layer = rel.split(os.sep)[0]
        for name in sorted(filenames):
            if not name.endswith(SOURCE_EXTS):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8", errors="replace") as f:
                for lineno, text in enumerate(f, 1):
                    m = INCLUDE_RE.match(text)
                    if not m:
                        continue
                    used = m.group(1)
                    if used == layer:
                        continue
                    if layer not in allowed:
                        yield path, lineno, layer, used, f"folder '{layer}' is not a layer in the table"
                    elif used not in allowed and used not in allowed[layer]:
                        yield path, lineno, layer, used, f"'{used}' is not a layer in the table"
                    elif used not in allowed[layer]:
                        yield path, lineno, layer, used, None


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=here, help="repository root holding src/kiln (default: this repository)")
    ap.add_argument("--doc", help="the doc with the layer table (default: ROOT/docs/ARCHITECTURE.md)")
    args = ap.parse_args()
    doc = args.doc or os.path.join(args.root, "docs", "ARCHITECTURE.md")
    try:
        allowed = closure(parse_table(doc))
    except (OSError, ValueError) as e:
        print(f"[check_layers] {e}", file=sys.stderr)
        return 2
    bad = 0
    for path, lineno, layer, used, why in check(args.root, allowed):
        bad += 1
        rel = os.path.relpath(path, args.root)
        reason = why or (f"layer '{layer}' may not include layer '{used}' "
                         f"(it may use: {', '.join(sorted(allowed[layer])) or 'nothing'})")
        print(f"{rel}:{lineno}: {reason}")
    if bad:
        print(f"[check_layers] {bad} forbidden include(s); fix them or change the 'may use' column "
              f"of {os.path.relpath(doc, args.root)}", file=sys.stderr)
        return 1
    print(f"[check_layers] ok: every include under src/kiln obeys {os.path.relpath(doc, args.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
