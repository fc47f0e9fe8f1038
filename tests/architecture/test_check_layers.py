#!/usr/bin/env python3
"""Self-test of scripts/check_layers.py: a copy of the real layer table over a planted tree passes
when clean and fails, naming file, line and layer, on one forbidden include (a header's too)."""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "check_layers.py")


def plant(root, files):
    os.makedirs(os.path.join(root, "docs"))
    shutil.copy(os.path.join(ROOT, "docs", "ARCHITECTURE.md"), os.path.join(root, "docs"))
    for rel, text in files.items():
        path = os.path.join(root, "src", "kiln", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def run(root):
    p = subprocess.run([sys.executable, SCRIPT, "--root", root], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def expect(cond, what, out):
    if not cond:
        print(f"FAIL: {what}\n--- output ---\n{out}")
        sys.exit(1)


clean = {
    "core/tensor.h": '#include <vector>\n',
    "ops/matmul.h": '#include "kiln/core/tensor.h"\n',
    "model/config.cpp": '#include "kiln/ops/matmul.h"\n#include "kiln/core/tensor.h"\n',  # core: transitively
    "cli/main.cpp": '#include "kiln/train/trainer.h"\n#include "kiln/serve/server.h"\n',
}
with tempfile.TemporaryDirectory() as tmp:
    plant(os.path.join(tmp, "clean"), clean)
    rc, out = run(os.path.join(tmp, "clean"))
    expect(rc == 0, "a clean tree passes", out)

    # A header in ops includes model (above it): caught with its path, line and both layers.
    bad = dict(clean)
    bad["ops/cpu/fused.cuh"] = '// a kernel\n#pragma once\n#include "kiln/core/tensor.h"\n  #  include "kiln/model/config.h"\n'
    plant(os.path.join(tmp, "bad"), bad)
    rc, out = run(os.path.join(tmp, "bad"))
    expect(rc == 1, "a forbidden include fails", out)
    expect(os.path.join("src", "kiln", "ops", "cpu", "fused.cuh") + ":4:" in out, "the file and line are named", out)
    expect("'ops' may not include layer 'model'" in out, "the layers are named", out)
    expect(out.count("may not include") == 1, "only the bad include is reported", out)

    # A folder that is not in the table is an error too (a new layer must be written down first).
    odd = dict(clean)
    odd["newlayer/x.cpp"] = '#include "kiln/core/tensor.h"\n'
    plant(os.path.join(tmp, "odd"), odd)
    rc, out = run(os.path.join(tmp, "odd"))
    expect(rc == 1 and "not a layer in the table" in out, "an unknown layer fails", out)
print("ok")
