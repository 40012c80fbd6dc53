"""`cxrtool export --deidentify`: a copy of a workspace's image shards and index to share outside
the hospital.

Inside the hospital, shards keep what opens a study in the PACS: archive paths, Study/Series/SOP
Instance UIDs (some embed dates), pseudonymous patient keys of this installation. None of that
may leave. The export re-keys every identifier with a fresh random secret that is used once and
never written anywhere, so nobody (the exporter included) can link an exported row back to a
file, a UID, or a patient key of the source; rows of one study, series or patient still share
their new key, so per-study search and patient filters keep working inside the export.

What is kept: the vectors, view, modality, body part, file format, transfer syntax and image
size. What is dropped: study dates, content hashes (they find the source file), errors.jsonl,
run logs, report shards (free text), serve caches and the archive location. The index is built
afresh in the export from the exported shards.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from cxrtool.constants import BUNDLED_MODEL
from cxrtool.embed.shards import read_shard, scan_shards, write_shard
from cxrtool.errors import WorkspaceError
from cxrtool.privacy import pseudonym
from cxrtool.workspace import Workspace

# column -> prefix of its re-keyed value (None: dropped); columns not named here are kept as they are
REKEYED = {"study_key": "st-", "series_uid": "se-", "sop_uid": "in-", "patient_key": "pt-", "accession_key": "ac-"}
DROPPED = ("study_date", "content_hash")


@dataclass
class ExportSummary:
    source: str
    out: str
    shards: int = 0
    rows: int = 0
    skipped_shards: int = 0  # shards that did not verify (not exported)
    index_kind: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _new_id(old: int, secret: bytes) -> int:
    digest = hmac.new(secret, str(old).encode(), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def deidentify_row(row: dict, secret: bytes) -> dict:
    """One shard row with every identifier re-keyed (``secret``: the export's one-time key)."""
    key = secret.hex()
    out = dict(row)
    out["id"] = _new_id(int(row["id"]), secret)
    suffix = PurePosixPath(row.get("path") or "").suffix.lower()[:6]
    out["path"] = f"{out['id']:016x}{suffix}"  # no folder or file name of the source survives
    for column, prefix in REKEYED.items():
        value = row.get(column)
        out[column] = pseudonym(str(value), key, prefix) if value not in (None, "") else value
    for column in DROPPED:
        out[column] = None
    return out


def export_workspace(out: str | Path, workspace: str | Path | None = None, deidentify: bool = True,
                     progress: bool = False) -> ExportSummary:
    """Write a de-identified copy of the workspace's image collection (shards + a fresh index) to ``out``."""
    from cxrtool.index.build import build_index

    if not deidentify:
        raise WorkspaceError("export writes de-identified copies only", "pass --deidentify (a plain copy is `cp -r`)")
    ws, dest = Workspace.resolve(workspace), Workspace(Path(out))
    if dest.root.resolve() == ws.root.resolve():
        raise WorkspaceError("the export must go to another folder than the workspace")
    if dest.root.exists() and any(dest.root.iterdir()):
        raise WorkspaceError(f"{dest.root} is not empty", "export into a new folder")
    info = ws.read_json(ws.embed_info) or {}
    scan = scan_shards(ws.shards, info.get("model_fingerprint"))
    if not scan.good:
        raise WorkspaceError(f"no embeddings in {ws.shards}", "run `cxrtool embed ARCHIVE` first")
    secret = secrets.token_bytes(32)  # used for this export only, never stored
    summary = ExportSummary(str(ws.root), str(dest.root), skipped_shards=len(scan.bad))
    dest.shards.mkdir(parents=True)
    for number, shard in enumerate(scan.good):
        table, vectors, vector_id = read_shard(shard)
        rows = [deidentify_row(r, secret) for r in table.to_pylist()]
        write_shard(dest.shards / f"shard-{number:05d}.parquet", rows, vectors, vector_id,
                    dtype="float16" if table.schema.metadata and
                    table.schema.metadata.get(b"embedding_dtype") == b"float16" else "float32")
        summary.shards += 1
        summary.rows += len(rows)
    model_ref = info.get("model_ref")
    shareable_ref = model_ref if model_ref == BUNDLED_MODEL or (model_ref and not model_ref.startswith("/")) else None
    dest.write_json(dest.embed_info, {"archive": None, "deidentified": True, "model": info.get("model", ""),
                                      "model_ref": shareable_ref, "model_fingerprint": scan.vector_id,
                                      "embed_dim": info.get("embed_dim")})
    summary.index_kind = build_index(dest.root, progress=progress).kind
    return summary
