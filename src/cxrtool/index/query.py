"""A text query -> the vector search ranks by (one home for search, evaluation and the scripts).

A query that names a finding is expanded with the prompt bank's sentences for it (CXR-CLIP's
prompt ensembles; :meth:`PromptBank.expand_query`). A query that also names a side ("left pleural
effusion") is contrasted with the same sentences on the other side:

    q = v(left X) + SIDE_CONTRAST * (v(left X) - v(right X)), re-normalised

so an image ranks by how much it looks like X *plus* how much more like "left X" than like
"right X" it looks. Plain similarity to "left X" is mostly about X: the two sides' sentences are
close (cosine ~0.96), so "left X" and "right X" return nearly the same images. The contrast
leaves the left-vs-right order of any two images unchanged (the AUROC of left vs right is the
same) and moves the side up the ranking. ``SIDE_CONTRAST = 1`` gives both parts equal weight, the
plain choice rather than a tuned one (docs/laterality.md, "Flip-paired vectors and side-contrasted
queries", has the figures for 0, 1, 2 and 4).

A sided query is only as good as the model's side for that finding. :func:`side_caveat` reads what
the model card says was measured and returns a warning when the side was not shown to be better
than chance (the interval of the left-vs-right AUROC reaches 0.5), e.g. nodules for the default
model, too small at its resolution to have a side it learned.
"""

from __future__ import annotations

import numpy as np

from cxrtool.data.prompts import PromptBank
from cxrtool.data.sides import LEFT, RIGHT, swap_sides
from cxrtool.model.card import ModelCard
from cxrtool.model.text_side import TextSide

SIDE_CONTRAST = 1.0


def contrast_sides(named: np.ndarray, other: np.ndarray, contrast: float = SIDE_CONTRAST) -> np.ndarray:
    """The named side's ensemble vector pushed away from the other side's; unit norm."""
    named, other = np.asarray(named, np.float32), np.asarray(other, np.float32)
    v = named + contrast * (named - other)
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def text_query_vector(model: TextSide, query: str, bank: PromptBank | None = None,
                      expand: bool = True) -> np.ndarray:
    """``query`` as search ranks it: expanded when it names a finding, side-contrasted when it names a
    side too; any other text (or ``expand=False``) encoded as typed. ``model``: any text side (a
    :class:`~cxrtool.model.dual.DualEncoder`, its ONNX export, the query-vector cache)."""
    bank = bank or PromptBank.load()
    sentences = bank.expand_query(query) if expand else None
    if not sentences:
        return model.encode_texts([query])[0]
    vector = model.encode_ensemble(sentences)
    if bank.query_side(query) in (LEFT, RIGHT):
        vector = contrast_sides(vector, model.encode_ensemble([swap_sides(s) for s in sentences]))
    return vector


def side_caveat(card: ModelCard, query: str, bank: PromptBank | None = None) -> str | None:
    """A warning for a query naming a side and a finding whose side this model was measured not to
    tell (left-vs-right AUROC interval reaching 0.5 in ``card.laterality``); None otherwise."""
    side, name = (bank or PromptBank.load()).query_finding(query)
    entry = card.laterality.get(name) if side in (LEFT, RIGHT) and name else None
    if not entry or entry["low"] > 0.5:
        return None
    measured = f", {entry['one_sided']} one-sided images" if entry.get("one_sided") else ""
    where = f" ({entry['measured_on']})" if entry.get("measured_on") else ""
    return (f"this model's side for {name.lower()} is not reliable: left-vs-right AUROC {entry['auroc']:.2f} "
            f"[{entry['low']:.2f}, {entry['high']:.2f}]{measured}{where}; results are ranked for the finding, "
            f"but treat their side as unknown")
