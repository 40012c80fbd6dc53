"""Subgroup breakdowns (sex, age band, view): does the model do worse for some patients?

Age is banded (AGE_BANDS) so groups are large enough to score; an attribute the data does not
carry is left out, and a group where a label has one class gets no AUROC for that label.
"""

from __future__ import annotations

import numpy as np

from cxrtool.evaluate.classification import auroc, known

AGE_BANDS = ((0, 40, "<40"), (40, 60, "40-59"), (60, 80, "60-79"), (80, 200, "80+"))
ATTRIBUTES = ("sex", "age_band", "view")
MIN_GROUP = 10  # fewer images than this: listed with its size, not scored


def age_band(age: object) -> str:
    """'63' -> '60-79'; unknown or unparsable -> ''."""
    try:
        years = float(str(age).strip().rstrip("Yy"))
    except ValueError:
        return ""
    return next((name for lo, hi, name in AGE_BANDS if lo <= years < hi), "")


def normalise_sex(value: object) -> str:
    v = str(value or "").strip().upper()[:1]
    return v if v in ("M", "F") else ""


def subgroup_report(prob: np.ndarray, labels: dict[str, np.ndarray], label_order: list[str],
                    attributes: dict[str, list[str]]) -> list[dict]:
    """Per attribute value: images, per-label AUROC, and their mean (over the labels that group could score)."""
    rows = []
    for attr in ATTRIBUTES:
        values = np.asarray(attributes.get(attr) or [], dtype=object)
        if not len(values) or not any(values):
            continue
        for group in sorted({v for v in values if v}):
            mask = values == group
            row = {"attribute": attr, "group": group, "images": int(mask.sum()), "auroc": {}}
            if mask.sum() >= MIN_GROUP:
                for j, label in enumerate(label_order):
                    y = np.asarray(labels[label])[mask]
                    k = known(y)
                    value = auroc(prob[mask][k, j], y[k].astype(int)) if k.any() else float("nan")
                    if not np.isnan(value):
                        row["auroc"][label] = round(value, 4)
            scored = list(row["auroc"].values())
            row["mean_auroc"] = round(float(np.mean(scored)), 4) if scored else None
            rows.append(row)
    return rows
