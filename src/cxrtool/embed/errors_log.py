"""errors.jsonl: one row per file that was not embedded, ``{"path", "kind", "stage", "reason"}``.

kind "error" | "not_image" | "skipped"; stage one of :data:`STAGES`. The rows are part of the
resume rule: a file listed here is done (unless the run retries errors), so a rerun never redoes
a corrupt file and never drops one silently.
"""

from __future__ import annotations

import json
from pathlib import Path

from cxrtool.constants import ERROR_STAGES
from cxrtool.workspace import Workspace

# Where a file dropped out, for errors.jsonl: "discover" (unreadable while looking for the DICOM
# signature, a folder that cannot be listed, a DICOMDIR-referenced file missing), "read" (the
# bytes could not be read), "header" (unreadable DICOM header, filtered out, duplicate instance),
# "decode" (the pixels could not be decoded).
STAGES = ERROR_STAGES


def error_line(path: str, kind: str, stage: str, reason: str) -> str:
    """One errors.jsonl line (the writer's and every other appender's format)."""
    return json.dumps({"path": path, "kind": kind, "stage": stage, "reason": reason}) + "\n"


def read_errors(workspace: Workspace | str | Path | None = None) -> list[dict]:
    """Every errors.jsonl row of the workspace (all parts), as ``{"path", "kind", "stage",
    "reason"}`` (stage "" in rows written before stages existed). A line cut short by a kill is
    ignored, so its file is simply done again."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    rows = []
    files = [ws.errors, *(sorted(ws.shards.rglob("errors.jsonl")) if ws.shards.is_dir() else [])]
    for path in (f for f in files if f.is_file()):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows.append({"path": row["path"], "kind": row.get("kind", ""), "stage": row.get("stage", ""),
                             "reason": row.get("reason", "")})
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return rows


def read_error_paths(ws: Workspace) -> set[str]:
    """Paths listed in the workspace's errors.jsonl files (all parts)."""
    return {row["path"] for row in read_errors(ws)}
