"""Train the default-model v5 candidates (issue 28) on nih_512 + nih_512_extra, resumably.

Three variants of the shipped recipe (build_default_model.RECIPE), compared by the rule written in
docs/model-v5.md before any held-out figure exists:

* ``v4like``: the recipe as it is (288 px, flips, ``flip_pair`` vectors: two passes per image, 1024-d);
* ``flip224``: the same at 224 px (v3's resolution; two cheaper passes, 1024-d);
* ``single288``: the same training (flips included), but ``single`` vectors (one pass, 512-d).

Data: nih_split.v5_studies (v4's held-out patients plus a keyed share of the new ones never train
or select; epochs are chosen on the validation split only). Each variant trains into
runs/v5/<variant>/model (model directory) with its run folder runs/v5/<variant>/model.run; a
stopped run continues from its last checkpoint when started again, and a finished one is left as
it is. The shipped model in src/cxrtool/default_model is never touched. Run one variant at a time
on a shared 2-core machine (each takes roughly an hour).

Usage: python scripts/build_model_v5.py --variant {v4like,flip224,single288} [--shared DIR] [--smoke DIR]
(``--smoke DIR``: 1 epoch of 2 steps on a small subset into DIR, to check the wiring in a minute)
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import subprocess
import time
from pathlib import Path

from build_default_model import PROVENANCE, RECIPE, TRAINING_DATA, VARIANTS, training_studies
from nih_split import V5_HELD_OUT_DIGEST, split_counts

from cxrtool.data.manifest import Study, write_manifest
from cxrtool.train import resolve_config, train

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "runs" / "v5"
def provenance(variant: str) -> dict:
    """The shipped recipe's provenance with v5's name, command and training data."""
    size = VARIANTS[variant].get("input_size", RECIPE["input_size"])
    return {**PROVENANCE, "name": f"cxrtool-default-v5 candidate {variant} (EfficientNet-Lite0 @{size} px + MiniLM-L6)",
            "built_by": f"scripts/build_model_v5.py --variant {variant}", "training_data": TRAINING_DATA}


def smoke_subset(studies: list[Study]) -> list[Study]:
    """A few train and validate studies from each folder (the extra folder's have no sides)."""
    rng = random.Random(0)
    out = []
    for split, n in (("train", 12), ("validate", 6)):
        for source in sorted({s.source for s in studies}):
            mine = [s for s in studies if s.split == split and s.source == source]
            out += rng.sample(mine, min(n, len(mine)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--smoke", type=Path, default=None, help="a scratch folder: 1 epoch, 2 steps, a small subset")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rest = training_studies(args.shared)  # refuses a split other than docs/model-v5.md's
    overrides = {**RECIPE, **VARIANTS[args.variant]}
    out = OUT / args.variant
    if args.smoke:
        rest = smoke_subset(rest)
        overrides.update(epochs=1, max_steps=2, batch_size=8, checkpoint_every=1, log_every=1)
        out = args.smoke / args.variant
    logging.info("variant %s: %d train, %d validate studies\n%s", args.variant, sum(s.split == "train" for s in rest),
                 sum(s.split == "validate" for s in rest), split_counts(rest))
    model_dir, run_dir = out / "model", out / "model.run"
    if (model_dir / "model.json").is_file():
        logging.info("%s is built already (remove it to rebuild); its summary: %s", model_dir, out / "summary.json")
        return
    manifest = write_manifest(rest, out / "manifest.parquet")  # train + validate rows only: no test row to leak
    cfg = resolve_config(overrides=overrides)
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    logging.info("training %s into %s (%s)", args.variant, model_dir, "resuming" if resume else "fresh run")
    t0 = time.time()
    result = train(manifest, model_dir, cfg, provenance=provenance(args.variant), run_dir=run_dir, resume=resume)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    summary = {"variant": args.variant, "overrides": VARIANTS[args.variant], "embedding": cfg.resolved_embedding(),
               "best_epoch": result.best_epoch, "this_process_minutes": round((time.time() - t0) / 60, 1),
               "train_seconds": round(sum(h.get("seconds", 0) for h in result.history), 1),
               "held_out_digest": V5_HELD_OUT_DIGEST, "commit": commit, "history": result.history}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("saved %s (best epoch %d by validation %s)", model_dir, result.best_epoch, cfg.select_by)
    for row in result.history:
        logging.info("%s", {k: v for k, v in row.items() if not isinstance(v, dict)})


if __name__ == "__main__":
    main()
