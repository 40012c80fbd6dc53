"""Check that a workspace accounts for exactly the archive: every file embedded once or listed
with a reason, nothing twice, nothing foreign, one model. The merge check for partitioned runs."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxrtool.embed.pipeline import read_error_paths
from cxrtool.embed.shards import read_shard, shard_paths
from cxrtool.io.discover import discover_archive
from cxrtool.workspace import Workspace


@dataclass
class ValidationReport:
    archive: str
    workspace: str
    files: int
    embedded: int
    listed_in_errors: int
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the archive, neither embedded nor listed
    unexpected: list[str] = field(default_factory=list)  # embedded but no longer in the archive
    vector_ids: list[str] = field(default_factory=list)  # more than one: shards of several models

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.missing or self.unexpected) and len(self.vector_ids) <= 1

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def validate_workspace(archive: str | Path, workspace: str | Path | None = None, limit: int = 20) -> ValidationReport:
    ws = Workspace.resolve(workspace)
    files = {f.rel for f in discover_archive(Path(archive))}
    rows: list[str] = []
    vector_ids = set()
    for p in shard_paths(ws.shards):
        table, _, vector_id = read_shard(p, ["path"], vectors=False)
        rows.extend(table.column("path").to_pylist())
        vector_ids.add(vector_id)
    errors = read_error_paths(ws)
    embedded = set(rows)
    dups = sorted(p for p, n in Counter(rows).items() if n > 1)
    return ValidationReport(
        str(Path(archive).resolve()), str(ws.root), len(files), len(embedded), len(errors - embedded),
        dups[:limit], sorted(files - embedded - errors)[:limit], sorted(embedded - files)[:limit], sorted(vector_ids))
