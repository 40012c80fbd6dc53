"""Search: a text query or an example image -> the nearest images, with their metadata."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cxrtool.embed.shards import read_shard_metadata
from cxrtool.errors import WorkspaceError
from cxrtool.index.build import load_index
from cxrtool.model.directory import load_model
from cxrtool.model.dual import DualEncoder
from cxrtool.workspace import Workspace


@dataclass
class Hit:
    rank: int
    score: float
    id: int
    path: str
    study_key: str
    view: str
    modality: str
    body_part: str
    text: str = ""  # report text, for report results

    def to_dict(self) -> dict:
        return asdict(self)


def search(
    query: str | None = None,
    image: str | Path | None = None,
    k: int = 10,
    workspace: str | Path | None = None,
    model: DualEncoder | str | None = None,
    target: str = "images",
) -> list[Hit]:
    """Top-``k`` images (``target="images"``) or reports (``"reports"``) for a text ``query`` or
    an example ``image`` (exactly one of them): text->image, image->image, image->report."""
    if (query is None) == (image is None):
        raise WorkspaceError("give either a text query or --image PATH (not both)")
    if target not in ("images", "reports"):
        raise WorkspaceError(f"unknown search target {target!r}", "use images or reports")
    ws = Workspace.resolve(workspace)
    index, info = load_index(ws.root, target=target)
    if not isinstance(model, DualEncoder):
        model = load_model(model)
    if info.model_fingerprint != model.card.fingerprint:
        raise WorkspaceError(
            f"the index in {ws.root} was built with another model than the one loaded",
            "search with the model used for `cxrtool embed` (--model), or re-embed with --overwrite",
        )
    vec = model.encode_texts([query]) if query is not None else model.encode_images([Path(image)])
    scores, ids = index.search(np.ascontiguousarray(vec, dtype=np.float32), min(k, info.count))
    pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0], strict=True) if i >= 0]
    shards, _ = ws.collection(target)
    meta = read_shard_metadata(shards, kind="report" if target == "reports" else "image")
    rows = meta.filter(pc.is_in(meta.column("id"), value_set=pa.array([i for _, i in pairs], pa.int64())))
    by_id = {r["id"]: r for r in rows.to_pylist()}
    hits = []
    for rank, (score, i) in enumerate(pairs, 1):
        r = by_id.get(i)
        if r is None:
            raise WorkspaceError(f"index id {i} has no row in the shards", "rebuild with `cxrtool index`")
        if target == "reports":
            hits.append(Hit(rank, round(score, 4), i, r["report_key"], r["study_key"] or "", "", "", "", r["text"]))
        else:
            hits.append(Hit(rank, round(score, 4), i, r["path"], r["study_key"] or "", r["view"] or "",
                            r["modality"] or "", r["body_part"] or ""))
    return hits
