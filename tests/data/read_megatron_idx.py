#!/usr/bin/env python3
"""An independent reader of Megatron-LM's indexed dataset (PREFIX.idx + PREFIX.bin), written from
the documented format (megatron/core/datasets/indexed_dataset.py), not from kiln's code:

  .idx: b"MMIDIDX\\x00\\x00" | version <Q = 1 | dtype code <B | sequence count <Q |
        document-index count <Q | lengths int32[S] | byte pointers int64[S] | doc indices int64[D]
  .bin: the tokens, dtype per the code (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
        7 float32, 8 uint16)

Usage: read_megatron_idx.py PREFIX OUT.json   writes {"dtype", "sequence_count",
"document_indices", "documents": [[tokens of document 0], ...]} (a document's sequences joined).
"""
import json
import struct
import sys

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64,
          7: np.float32, 8: np.uint16}


def main(prefix, out_path):
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    assert idx[:9] == b"MMIDIDX\x00\x00", "bad magic"
    (version,) = struct.unpack_from("<Q", idx, 9)
    assert version == 1, "bad version"
    (code,) = struct.unpack_from("<B", idx, 17)
    dtype = np.dtype(DTYPES[code]).newbyteorder("<")
    seq_count, doc_count = struct.unpack_from("<QQ", idx, 18)
    off = 34
    lengths = np.frombuffer(idx, dtype="<i4", count=seq_count, offset=off)
    off += 4 * seq_count
    pointers = np.frombuffer(idx, dtype="<i8", count=seq_count, offset=off)
    off += 8 * seq_count
    doc_idx = np.frombuffer(idx, dtype="<i8", count=doc_count, offset=off)
    off += 8 * doc_count
    assert off == len(idx), f"index has {len(idx)} bytes, expected {off}"
    assert doc_idx[0] == 0 and doc_idx[-1] == seq_count, "document indices must span 0..S"

    binary = np.memmap(prefix + ".bin", dtype=np.uint8, mode="r")
    itemsize = dtype.itemsize
    seqs = []
    for ln, ptr in zip(lengths.tolist(), pointers.tolist()):
        assert ptr + ln * itemsize <= binary.size, "pointer beyond .bin"
        seqs.append(np.frombuffer(binary, dtype=dtype, count=ln, offset=ptr))
    documents = []
    for d in range(doc_count - 1):
        parts = seqs[doc_idx[d]:doc_idx[d + 1]]
        documents.append(np.concatenate(parts).tolist() if parts else [])
    with open(out_path, "w") as f:
        json.dump({"dtype": code, "sequence_count": seq_count,
                   "document_indices": doc_idx.tolist(), "documents": documents}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
