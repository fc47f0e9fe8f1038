"""Writes the quickstart's raw JSONL documents from the fetched corpora:
  data/brown_docs.jsonl  one document per Brown corpus text (500), its training lines only
                         (every 50th line of data/brown.txt is held out in data/brown_val.txt)
  data/nlp_docs.jsonl    nlp-corpus's 50,000 sentences grouped 25 to a document, in order
Usage: make_jsonl.py BROWN_PACKAGE_DIR NLP_CORPUS_DIR OUT_DIR"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from strip_brown import brown_lines  # noqa: E402

brown_dir, nlp_dir, out = sys.argv[1:4]
docs, index = {}, 0
for name, line in brown_lines(brown_dir):
    if index % 50 != 49:  # the same lines strip_brown's split keeps for training
        docs.setdefault(name, []).append(line)
    index += 1
with open(os.path.join(out, "brown_docs.jsonl.tmp"), "w", encoding="utf-8") as f:
    for name, lines in docs.items():
        f.write(json.dumps({"id": "brown/" + name, "text": "\n".join(lines)}) + "\n")
os.replace(os.path.join(out, "brown_docs.jsonl.tmp"), os.path.join(out, "brown_docs.jsonl"))

builds = os.path.join(nlp_dir, "builds")
files = sorted((f for f in os.listdir(builds) if re.fullmatch(r"doc-\d+\.json", f)),
               key=lambda f: int(f[4:-5]))
sentences = []
for f in files:
    with open(os.path.join(builds, f), encoding="utf-8") as fh:
        sentences += json.load(fh)
with open(os.path.join(out, "nlp_docs.jsonl.tmp"), "w", encoding="utf-8") as f:
    for i in range(0, len(sentences), 25):
        f.write(json.dumps({"id": f"nlp/{i // 25}", "text": "\n".join(sentences[i:i + 25])},
                           ensure_ascii=False) + "\n")
os.replace(os.path.join(out, "nlp_docs.jsonl.tmp"), os.path.join(out, "nlp_docs.jsonl"))
print(f"[data] wrote {out}/brown_docs.jsonl ({len(docs)} docs), "
      f"{out}/nlp_docs.jsonl ({(len(sentences) + 24) // 25} docs)")
