"""Where a search's top 50 comes from on the v5 held-out split: positives, views and folders.

Explains a lift@50 of scripts/heldout_v5.py (run it first: this reads its manifest and cached
vectors). For each model and query: positives in the top 50, how many top hits are PA / AP and
from nih_512_extra, and the query score's AUROC for the finding within PA and within AP images
(a query that ranks by view shows a high view share and a within-view AUROC near 0.5).

Usage: cd scripts && python query_views.py [MODEL_NAME ...]   (default: v4 single288; names as in heldout_v5)
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
from heldout_v5 import HELDOUT, model_dir
from train_experiments import LIFT_QUERIES, precision_at

from cxrtool.data.prompts import PromptBank
from cxrtool.evaluate.classification import auroc
from cxrtool.evaluate.eval_set import embed_eval_set, eval_set_from_manifest
from cxrtool.index.query import text_query_vector
from cxrtool.model import load_model

K = 50


def main() -> None:
    names = sys.argv[1:] or ["v4", "single288"]
    bank = PromptBank.load()
    for name in names:
        model = load_model(str(model_dir(name)))
        es = eval_set_from_manifest(HELDOUT / "manifest.parquet", bank)
        embed_eval_set(model, es, cache_dir=HELDOUT / name)  # heldout_v5's cache: nothing is embedded again
        test = es.subset(es.splits == "test")
        view = np.asarray([str(v) for v in test.attributes.get("view", [""] * len(test))])
        extra = np.array(["nih_512_extra" in p for p in test.paths])
        for label, query in LIFT_QUERIES.items():
            score = test.vectors @ text_query_vector(model, query, bank)
            positive = np.nan_to_num(test.labels[label]) == 1
            top = np.argsort(-score, kind="mergesort")[:K]
            within = {v: round(auroc(score[view == v], positive[view == v]), 3) for v in ("PA", "AP")}
            print(f"{name} {query!r}: top {K}: {int(positive[top].sum())} positives "
                  f"(lift {precision_at(score, positive, K) / positive.mean():.2f}), "
                  f"views {dict(Counter(view[top].tolist()))}, "
                  f"{int(extra[top].sum())} from nih_512_extra (which holds {int(extra.sum())} of {len(test)} images, "
                  f"{int(positive[extra].sum())} of {int(positive.sum())} positives); AUROC within view {within}")


if __name__ == "__main__":
    main()
