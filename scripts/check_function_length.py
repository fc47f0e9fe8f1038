#!/usr/bin/env python3
"""Fails when a function under src/kiln is longer than the limit (200 lines by default).

A function's length runs from the first line of its signature to its closing brace, lambdas and
local classes included. The source is read as text: comments, strings and character literals
are blanked, then braces are matched; a brace opens a function body when it sits at namespace or
class scope and its declaration has a parameter list. The code is clang-formatted, which this
relies on no further than that.

usage: check_function_length.py [--root DIR] [--max N] [--top K]
  --top K   also print the K longest functions (the counts quoted in commit messages)
exit status: 0 every function within the limit, 1 otherwise (each printed as file:line: ...).
"""
import argparse
import os
import re
import sys

SOURCE_EXTS = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh", ".inc")
SCOPE_RE = re.compile(r"\b(namespace|class|struct|union|enum)\b")
CTOR_INIT_RE = re.compile(r"\)\s*(noexcept\s*)?:[^:]")  # Widget(int a) : a_(a), ...


def blank(text):
    """The text with comments, string and char literals replaced by spaces (newlines kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == 'R' and text.startswith('R"', i) and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum():  # digit separator: 1'000
                out.append(" ")
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """Yields (name, first line, last line) of every function body at namespace/class scope."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = blank(f.read())
    # Preprocessor lines are not declarations.
    text = re.sub(r"(?m)^[ \t]*#(?:[^\n]*\\\n)*[^\n]*",
                  lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    stack = []  # (kind, start line, name) per open brace: "scope", "function" or "block"
    head_start = 0  # where the current declaration began (after the last ; { or } at this level)
    line = 1
    for i, c in enumerate(text):
        if c == "\n":
            line += 1
        elif c == "{":
            at_scope = all(k in ("scope", "init") for k, _, _ in stack)
            head = text[head_start:i]
            if at_scope and CTOR_INIT_RE.search(head) and re.search(r"[\w>]\s*$", head):
                stack.append(("init", line, ""))  # b_{a} in a constructor's initializer list
                continue
            if at_scope and SCOPE_RE.search(head) and "(" not in head.split("=")[0]:
                stack.append(("scope", line, ""))
            elif at_scope and "(" in head:
                first = head_start + len(head) - len(head.lstrip())
                name = [w for w in re.findall(r"([~\w:<>]+)\s*\(", head) if not w.startswith("__")]
                stack.append(("function", text.count("\n", 0, first) + 1,
                              name[0] if name else "?"))
            else:
                stack.append(("block", line, ""))
            head_start = i + 1
        elif c == "}":
            if stack:
                kind, start, name = stack.pop()
                if kind == "function":
                    yield name, start, line
                if kind == "init":
                    continue  # the constructor's head goes on
            head_start = i + 1
        elif c == ";":
            head_start = i + 1
        elif c == ":" and all(k == "scope" for k, _, _ in stack):
            # access specifiers (public:) end a declaration head; a :: does not
            if text[i - 1] != ":" and text[i + 1:i + 2] != ":" and re.search(
                    r"\b(public|private|protected)\s*$", text[head_start:i]):
                head_start = i + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    ap.add_argument("--max", type=int, default=200)
    ap.add_argument("--top", type=int, default=0)
    args = ap.parse_args()
    src = os.path.join(args.root, "src", "kiln")
    found = []
    for dirpath, _, files in os.walk(src):
        for fn in sorted(files):
            if fn.endswith(SOURCE_EXTS):
                p = os.path.join(dirpath, fn)
                rel = os.path.relpath(p, args.root)
                for name, a, b in functions(p):
                    found.append((b - a + 1, rel, a, name))
    if not found:
        print(f"no functions found under {src}", file=sys.stderr)
        return 2
    found.sort(reverse=True)
    for length, rel, a, name in found[:args.top]:
        print(f"{length:5d} {rel}:{a} {name}")
    long = [f for f in found if f[0] > args.max]
    for length, rel, a, name in long:
        print(f"{rel}:{a}: {name} is {length} lines (limit {args.max}): split it", file=sys.stderr)
    print(f"{len(found)} functions, the longest {found[0][0]} lines "
          f"({found[0][1]}:{found[0][2]} {found[0][3]}); {len(long)} over {args.max}")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
