"""The cosines that search's near-duplicate threshold (constants.DEDUPE_COSINE) must separate, for one model.

On sample_data/archive: one radiograph re-encoded in 7 transfer syntaxes (pacs/PAT0004: the
copies must stay above the threshold), different studies of one NIH patient and images of
different patients (both must stay below it). README.md and constants.py quote these figures
for the bundled model; rerun this after the model changes.

Usage: python scripts/dedupe_cosines.py [MODEL]   (default: the bundled model)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from cxrtool.constants import DEDUPE_COSINE
from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard, scan_shards
from cxrtool.model import load_model

ARCHIVE = Path(__file__).resolve().parents[1] / "sample_data" / "archive"


def main() -> None:
    model = load_model(sys.argv[1] if len(sys.argv) > 1 else None)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        embed_archive(ARCHIVE, ws, model, progress=False)
        paths, studies, patients, parts = [], [], [], []
        for shard in scan_shards(ws / "shards").good:
            table, vectors, _ = read_shard(shard, ["path", "study_key", "patient_key"])
            paths += table.column("path").to_pylist()
            studies += table.column("study_key").to_pylist()
            patients += table.column("patient_key").to_pylist()
            parts.append(vectors)
    v = np.concatenate(parts).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    cos = v @ v.T
    copies = [i for i, p in enumerate(paths) if p.startswith("pacs/PAT0004/")]
    cc = cos[np.ix_(copies, copies)][~np.eye(len(copies), dtype=bool)]
    a, b = np.triu_indices(len(paths), 1)
    study, patient = np.asarray(studies), np.asarray(patients)
    nih = np.array([p.startswith("nih/") for p in paths])
    same_patient = (patient[a] == patient[b]) & (study[a] != study[b]) & nih[a] & nih[b]
    print(f"{model.card.provenance.get('name', '?')} ({len(paths)} images; threshold {DEDUPE_COSINE}):")
    print(f"  one radiograph in {len(copies)} transfer syntaxes: cosine {cc.min():.3f}-{cc.max():.3f} to its copies")
    print(f"  different studies of one NIH patient: at most {cos[a, b][same_patient].max():.3f} "
          f"({int(same_patient.sum())} pairs)")
    print(f"  different patients: at most {cos[a, b][patient[a] != patient[b]].max():.3f}")


if __name__ == "__main__":
    main()
