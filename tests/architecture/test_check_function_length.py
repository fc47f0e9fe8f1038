#!/usr/bin/env python3
"""Self-test of scripts/check_function_length.py: over a planted tree it measures a function from
its signature to its closing brace (class members, constructors with initializer lists, lambdas
inside counted with their function), is not fooled by braces in strings, comments, raw strings
or macros, and fails naming the file, line and function that passes the limit."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "check_function_length.py")


def run(root, *extra):
    p = subprocess.run([sys.executable, SCRIPT, "--root", root, *extra], capture_output=True,
                       text=True)
    return p.returncode, p.stdout + p.stderr


def expect(cond, what, out):
    if not cond:
        print(f"FAIL: {what}\n--- output ---\n{out}")
        sys.exit(1)


def body(n):  # n lines of statements, with braces that must not confuse the matcher
    lines = []
    for i in range(n):
        lines.append(["  x += 1;  // }", '  s = "}{";', "  c = '}';", "  /* { */ y();",
                      "  auto f = [&] { return 1; };"][i % 5])
    return "\n".join(lines) + "\n"


SRC = ('#define OPEN {\n'
       '#define LONG_MACRO(x) \\\n  do { x; } while (0)\n'
       'namespace kiln {\n'
       'namespace {\nconst char* raw = R"({ { {)";\n}  // namespace\n'
       'class Widget : public Base {\n public:\n'
       '  Widget(int a) : a_(a), b_{a} {\n' + body(10) + '  }\n'
       '  int get() const { return a_; }\n'
       ' private:\n  int a_, b_;\n};\n'
       'void Widget::long_one(int n) {\n' + body(198) + '}\n'   # 200 lines: at the limit
       'struct Table { int rows[3] = {1, 2, 3}; };\n'
       'int too_long(\n    int a,\n    int b) {\n' + body(199) + '}\n'  # 203 lines
       '}  // namespace kiln\n')
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "src", "kiln", "ops", "widget.cpp")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(SRC)
    rc, out = run(tmp, "--top", "10")
    expect(rc == 1, "a 203-line function fails", out)
    expect("src/kiln/ops/widget.cpp:" in out and "too_long is 203 lines (limit 200)" in out,
           "the file, function and length are named", out)
    expect("long_one is" not in out, "a function of exactly the limit passes", out)
    expect("  200 src/kiln/ops/widget.cpp" in out and "Widget::long_one" in out,
           "the 200-line member is measured from its signature", out)
    expect("   12 src/kiln/ops/widget.cpp" in out and " Widget\n" in out,
           "the constructor with its initializer list is one 12-line function", out)
    expect("4 functions" in out, "get(), the constructor and the two free functions are found", out)
    rc, out = run(tmp, "--max", "203")
    expect(rc == 0, "--max moves the limit", out)
print("check_function_length self-test: ok")
