"""The held-out evaluation manifest of the bundled default model (NIH ChestX-ray14, 512 px).

The held-out test patients of scripts/nih_split.py (the sample_data patients and a further hash
bucket), which the default model never saw, get split ``test``; every other patient (the model's
training and validation patients) gets ``train``, used only to fit the linear probe.
Patient-disjoint by construction.
Adds ``sex`` and ``age`` columns (beyond the manifest schema) for the subgroup breakdown. Sides of
findings come from the labels CSV's ``bbox_json`` (radiologist boxes) for the laterality section.

Usage: python scripts/build_nih_eval_manifest.py [SHARED_DATA_DIR] [OUT.parquet]
then:  cxrtool evaluate OUT.parquet --out runs/eval_default_nih
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from build_sample_data import FINDINGS
from nih_split import is_test_patient

from cxrtool.data.manifest import write_manifest
from cxrtool.data.sources.csv_table import read_csv_studies

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "runs" / "eval_nih" / "manifest.parquet"


def main() -> None:
    table = SHARED / "nih_512" / "labels.csv"
    studies = read_csv_studies(table, patient_col="patient_id", view_col="view", label_cols=FINDINGS,
                               source="nih-chestxray14", validate_fraction=0.0)
    for s in studies:
        s.split = "test" if is_test_patient(s.patient_key) else "train"
    write_manifest(studies, OUT)
    with open(table, newline="") as fh:
        by_path = {str((table.parent / r["path"]).resolve()): r for r in csv.DictReader(fh)}
    rows = [by_path.get(str(Path(s.images[0].path).resolve()), {}) for s in studies]
    manifest = pq.read_table(OUT)
    manifest = manifest.append_column("sex", pa.array([r.get("sex") or None for r in rows], pa.string()))
    manifest = manifest.append_column("age", pa.array([r.get("age") or None for r in rows], pa.string()))
    pq.write_table(manifest, OUT)
    n_test = sum(s.split == "test" for s in studies)
    print(f"{OUT}: {len(studies)} studies, {n_test} held-out (test), {len(studies) - n_test} train")


if __name__ == "__main__":
    main()
