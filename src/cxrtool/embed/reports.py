"""Report banks -> text shards, for image->report (and text->report) search.

A report bank is a study manifest (any `cxrtool prepare` output: findings, impression, report or
its evaluation text) or a CSV with a key column and a text column. Shards are written like image
shards: atomically, with ids, resumable, tied to the model fingerprint. The report text is
stored as given, so the results can show it; embed only report banks you may keep.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cxrtool.constants import REPORT_TEXT_FIELDS, SHARD_ROWS
from cxrtool.data.manifest import read_manifest
from cxrtool.data.sources.common import open_text
from cxrtool.embed.quarantine import verified_shards
from cxrtool.embed.shards import image_id, read_shard_metadata
from cxrtool.embed.writer import ShardWriter
from cxrtool.errors import ManifestError
from cxrtool.locks import workspace_lock
from cxrtool.model.dual import DualEncoder
from cxrtool.model.factory import load_model
from cxrtool.workspace import Workspace, check_same_model

TEXT_FIELDS = REPORT_TEXT_FIELDS  # manifest fields a report bank can embed


@dataclass
class ReportSummary:
    source: str
    workspace: str
    found: int = 0
    already_done: int = 0
    embedded: int = 0
    empty: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def read_report_bank(source: Path, text_field: str = "text", key_col: str | None = None,
                     text_col: str | None = None) -> list[dict]:
    """Rows {report_key, study_key, source, text} from a manifest (.parquet) or a CSV."""
    if source.suffix == ".parquet":
        if text_field not in TEXT_FIELDS:
            raise ManifestError(f"unknown text field {text_field!r}; use one of {TEXT_FIELDS}")
        return [{"report_key": f"{s.study_key}#{text_field}", "study_key": s.study_key, "source": s.source,
                 "text": (getattr(s, text_field) or "").strip()} for s in read_manifest(source)]
    with open_text(source) as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        key_col = key_col or next((c for c in ("study_key", "StudyInstanceUID", "id", "study_id") if c in fields), None)
        text_col = text_col or next((c for c in ("report", "text", "impression", "findings") if c in fields), None)
        if key_col not in fields or text_col not in fields:
            raise ManifestError(f"{source}: need a key and a text column; columns are {', '.join(fields)}",
                                "pass --key-col NAME --report-col NAME")
        return [{"report_key": r[key_col].strip(), "study_key": r[key_col].strip(), "source": source.name,
                 "text": (r[text_col] or "").strip()} for r in reader]


def embed_reports(source: str | Path, workspace: str | Path | None = None, model: DualEncoder | str | None = None,
                  text_field: str = "text", key_col: str | None = None, text_col: str | None = None,
                  batch_size: int = 64, shard_rows: int = SHARD_ROWS, progress: bool = True,
                  wait: bool = True) -> ReportSummary:
    """Embed a report bank into ``<workspace>/reports/`` (resumes by report key), holding the
    workspace's report-writer lock (``wait=False``: refuse when another run holds it)."""
    source = Path(source)
    if not source.is_file():
        raise ManifestError(f"{source}: not found")
    ws = Workspace.resolve(workspace)
    if not isinstance(model, DualEncoder):
        model = load_model(ws.model_of(model))
    info = ws.read_json(ws.embed_info)
    check_same_model(model.card, info.get("model_fingerprint") if info else None,
                     f"the images in {ws.root} were embedded",
                     "embed reports with the same --model as the images, or use another --workspace")
    with workspace_lock(ws.root, "embed-reports", "cxrtool embed-reports", wait):
        return _embed_reports_locked(ws, source, model, text_field, key_col, text_col, batch_size, shard_rows,
                                     progress)


def _embed_reports_locked(ws: Workspace, source: Path, model: DualEncoder, text_field: str, key_col: str | None,
                          text_col: str | None, batch_size: int, shard_rows: int, progress: bool) -> ReportSummary:
    from tqdm import tqdm

    shards, _ = ws.collection("reports")
    shards.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = read_report_bank(source, text_field, key_col, text_col)
    summary = ReportSummary(str(source), str(ws.root), found=len(rows))
    scan = verified_shards(ws, shards, model.card, shards, kind="report")
    done = set(read_shard_metadata(shards, ["report_key"], kind="report", scan=scan).column("report_key").to_pylist())
    todo = []
    for r in rows:
        if r["report_key"] in done:
            summary.already_done += 1
        elif not r["text"]:
            summary.empty += 1
        else:
            done.add(r["report_key"])  # a key listed twice in the bank is embedded once
            todo.append(r)
    with ShardWriter(shards, model.card.vector_id, shard_rows=shard_rows, kind="report") as writer:
        for start in tqdm(range(0, len(todo), shard_rows), desc="reports", disable=not progress or not todo):
            chunk = todo[start : start + shard_rows]
            for r in chunk:
                r["id"] = image_id("report:" + r["report_key"])
            writer.write(chunk, np.asarray(model.encode_texts([r["text"] for r in chunk], batch_size=batch_size)))
    summary.embedded = writer.written
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary
