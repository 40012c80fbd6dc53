"""How well does a model find each labelled finding in sample_data? (held-out NIH images)

Usage: python scripts/eval_sample_retrieval.py [MODEL_DIR]   (default: the bundled model)
Prints precision@5 of the query naming each finding against its base rate, and AUROC.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

from cxrtool.evaluate import label_query_report
from cxrtool.model import load_model

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"
QUERIES = {"atelectasis": "atelectasis", "cardiomegaly": "cardiomegaly", "consolidation": "consolidation",
           "edema": "pulmonary edema", "effusion": "pleural effusion", "infiltration": "infiltrate",
           "mass": "lung mass", "nodule": "lung nodule", "pneumonia": "pneumonia",
           "pneumothorax": "pneumothorax", "no_finding": "the lungs are clear"}


def main() -> None:
    model = load_model(sys.argv[1] if len(sys.argv) > 1 else None)
    with open(SAMPLE / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    vecs = model.encode_images([SAMPLE / "archive" / r["path"] for r in rows])
    labels = {k: np.array([int(r[k]) for r in rows]) for k in QUERIES}
    report = label_query_report(model, vecs, labels, QUERIES, k=5)
    for row in report:
        print(json.dumps(row))
    print(f"mean AUROC {np.nanmean([r['auroc'] for r in report]):.3f}; "
          f"P@5 > base rate for {sum(r['precision@5'] > r['base_rate'] for r in report)}/{len(report)} findings")


if __name__ == "__main__":
    main()
