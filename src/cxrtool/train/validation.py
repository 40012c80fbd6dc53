"""Per-epoch validation: the contrastive loss, zero-shot AUROC and Recall@K on the validate split.

Runs on one process (rank 0) with the eval transform and deterministic texts, so the figures of
two epochs (or two runs) are comparable. Zero-shot AUROC uses the same prompt sets and classifier
as ``cxrtool evaluate``; Recall@K uses the same retrieval code.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrtool.data.prompts import PromptBank
from cxrtool.evaluate.retrieval import retrieval_report
from cxrtool.evaluate.zero_shot import ZeroShotClassifier, label_prompt_sets
from cxrtool.model.dual import DualEncoder
from cxrtool.train.data import StudyDataset, collate
from cxrtool.train.loss import cxr_clip_loss


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


@torch.no_grad()
def validate(model: DualEncoder, data: StudyDataset, batch_size: int, device: torch.device,
             icl_weight: float, tcl_weight: float, false_negatives: bool, amp: torch.dtype | None = None,
             bank: PromptBank | None = None) -> dict:
    """Loss terms (mean over batches), mean zero-shot AUROC and text→image Recall@K."""
    from sklearn.metrics import roc_auc_score

    model.eval()
    sums: dict[str, float] = {}
    batches = 0
    image_vectors, texts, indices = [], [], []
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for batch in loader:
        with _autocast(device, amp):
            feats = model.image_features(torch.cat([batch.img1, batch.img2]).to(device))
            enc = {k: v.to(device) for k, v in model.tokenize(batch.text1 + batch.text2).items()}
            tfeats = model.text_features(**enc)
        feats, tfeats = feats.float(), tfeats.float()
        n = len(batch)
        i1, i2, t1, t2 = feats[:n], feats[n:], tfeats[:n], tfeats[n:]
        # search-time vectors, as the exported model will write them (flip_pair: with the mirror image's)
        image_vectors.append(model.encode_pixels(batch.img1) if model.card.embedding == "flip_pair"
                             else i1.cpu().numpy())
        texts += batch.text1
        indices += batch.indices
        if n < 2:
            continue
        terms = cxr_clip_loss(i1, i2, t1, t2, model.scale().float(), icl_weight, tcl_weight,
                              keys=batch.keys.to(device) if false_negatives else None, distributed=False)
        for k, v in terms.floats().items():
            sums[k] = sums.get(k, 0.0) + v
        batches += 1
    out: dict = {f"val_{k}": round(v / batches, 4) for k, v in sums.items()} if batches else {"val_total": math.nan}
    if not image_vectors:
        return out
    vectors = np.concatenate(image_vectors)
    out["val_recall"] = retrieval_report(vectors, texts, model.encode_texts)["text_to_image"]
    labels = _label_columns([data.studies[i].labels for i in indices], bank or data.bank)
    if labels:
        clf = ZeroShotClassifier.from_prompts(model, label_prompt_sets(list(labels), bank or data.bank))
        probs = clf.probabilities(vectors)
        aurocs = {}
        for j, name in enumerate(clf.labels):
            y = labels[name]
            known = ~np.isnan(y)
            if known.sum() and 0 < y[known].sum() < known.sum():
                aurocs[name] = round(float(roc_auc_score(y[known], probs[known, j])), 4)
        if aurocs:
            out["val_auroc"] = round(float(np.mean(list(aurocs.values()))), 4)
            out["val_auroc_by_label"] = aurocs
    return out


def _label_columns(rows: list[dict[str, int]], bank: PromptBank) -> dict[str, np.ndarray]:
    """label -> 0/1 (uncertain and unknown as NaN) for labels with both classes present."""
    names = sorted({bank.canonical(k) for r in rows for k in r} - {"No Finding"})
    out = {}
    for name in names:
        y = np.full(len(rows), np.nan)
        for i, r in enumerate(rows):
            for k, v in r.items():
                if bank.canonical(k) == name and v in (0, 1):
                    y[i] = max(v, 0 if np.isnan(y[i]) else y[i])
        known = y[~np.isnan(y)]
        if len(known) and 0 < known.sum() < len(known):
            out[name] = y
    return out


def selection_score(row: dict, select_by: str) -> float:
    """Lower is better: validation loss, or minus AUROC / minus text→image Recall@10."""
    if select_by == "auroc" and "val_auroc" in row:
        return -row["val_auroc"]
    if select_by == "recall" and "val_recall" in row:
        return -row["val_recall"].get("recall@10", 0.0)
    return row.get("val_total", math.nan)

