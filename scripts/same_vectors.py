"""Are two workspaces' image vectors bit-identical? (A refactor's proof: embed the same archive with
the same model before and after, then compare.)

    python scripts/same_vectors.py WORKSPACE_A WORKSPACE_B

Rows are matched by id; exit status 0 when every row's vector bytes and metadata agree, 1 otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def read(workspace: Path) -> tuple[dict[int, bytes], dict[int, dict], set[str]]:
    vectors, rows, ids = {}, {}, set()
    for shard in sorted((workspace / "shards").rglob("*.parquet")):
        table = pq.read_table(shard)
        ids.add((table.schema.metadata or {}).get(b"model_fingerprint", b"").decode())
        emb = table.column("embedding").combine_chunks()
        flat = emb.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1)
        for row, vec in zip(table.drop_columns(["embedding"]).to_pylist(), flat, strict=True):
            vectors[row["id"]] = np.ascontiguousarray(vec).tobytes()
            rows[row["id"]] = row
    return vectors, rows, ids


def main(a: str, b: str) -> int:
    va, ra, ida = read(Path(a))
    vb, rb, idb = read(Path(b))
    problems = []
    if ida != idb:
        problems.append(f"vector ids differ: {sorted(ida)} vs {sorted(idb)}")
    if set(va) != set(vb):
        problems.append(f"rows differ: {len(set(va) - set(vb))} only in A, {len(set(vb) - set(va))} only in B")
    common = sorted(set(va) & set(vb))
    differing = [i for i in common if va[i] != vb[i]]
    meta = [i for i in common if ra[i] != rb[i]]
    if differing:
        problems.append(f"{len(differing)} of {len(common)} vectors differ (first: {ra[differing[0]]['path']})")
    if meta:
        problems.append(f"{len(meta)} of {len(common)} rows' metadata differ (first: {ra[meta[0]]['path']})")
    print(f"{len(common)} rows compared; " + ("; ".join(problems) if problems else "all vectors bit-identical"))
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
