"""Check that a workspace accounts for exactly the archive: every file embedded once or listed
with a reason, nothing twice, nothing foreign, one model, every shard verified. The merge check
for partitioned runs, and the deep check of shards (their bytes against the writer's checksum).

The archive is walked here on its own (:func:`archive_entries`), not through the embed run's
discovery, so a file discovery never saw (its blind spots are what validate exists to catch) is
reported missing instead of passing unseen."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxrtool.embed.pipeline import read_error_paths
from cxrtool.embed.shards import BadShard, UnreadableShardError, file_checksum, read_ledger, read_shard, scan_shards
from cxrtool.io.discover import archive_rel
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
    vector_ids: list[str] = field(default_factory=list)  # the verified shards' model (one at most)
    bad_shards: list[dict] = field(default_factory=list)  # {"path", "reason"}: did not verify (never read)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.missing or self.unexpected or self.bad_shards) and len(self.vector_ids) <= 1

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def archive_entries(root: Path) -> set[str]:
    """Every entry a complete run must account for, by its own walk: each non-folder entry (regular
    file, link, special file) once; as one entry each, a hidden folder, a folder that cannot be
    listed, and a folder reached a second time (a loop, a second link to it, or a link to a folder
    inside the archive, which is walked by its own path): embed lists each of these as one row."""
    root = Path(root)
    if not root.is_dir():
        return {root.name}
    real_root = root.resolve()
    entries: set[str] = set()
    st = root.stat()
    visited = {(st.st_dev, st.st_ino)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            children = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            entries.add(archive_rel(folder, root))
            continue
        subfolders = []
        for child in children:
            path = Path(child.path)
            rel = archive_rel(path, root)
            try:
                is_dir = child.is_dir(follow_symlinks=True)
                key = (child.stat().st_dev, child.stat().st_ino) if is_dir else None
            except OSError:
                is_dir, key = False, None
            if not is_dir or child.name.startswith(".") or key in visited or \
                    (child.is_symlink() and path.resolve().is_relative_to(real_root)):
                entries.add(rel)
            else:
                visited.add(key)
                subfolders.append(path)
        stack.extend(reversed(subfolders))
    return entries


def server_entries(source: str, query: dict | None) -> set[str]:
    """What a DICOMweb source holds for the recorded query (modalities, body parts; no date
    range: validate asks whether the workspace accounts for the whole server, whatever ``--since``
    the runs used), as embed names instances: their WADO-RS paths."""
    from cxrtool.io.classify import HeaderFilter
    from cxrtool.io.dicomweb import client_for, list_instances, parse_source

    query = query or {}
    keep = HeaderFilter() if "modalities" not in query else HeaderFilter(
        tuple(query["modalities"]) if query.get("modalities") else None,
        tuple(query["body_parts"]) if query.get("body_parts") else None)
    return {item.rel for item in list_instances(client_for(parse_source(source)), keep).items}


def validate_workspace(archive: str | Path, workspace: str | Path | None = None, limit: int = 20) -> ValidationReport:
    from cxrtool.io.dicomweb import is_dicomweb, parse_source, source_label

    ws = Workspace.resolve(workspace)
    info = ws.read_json(ws.embed_info) or {}
    if is_dicomweb(archive):
        archive = source_label(parse_source(str(archive)))
        files = server_entries(str(archive), info.get("query"))
    else:
        archive = Path(archive).resolve()
        files = archive_entries(archive)
    scan = scan_shards(ws.shards, info.get("model_fingerprint"))
    bad = list(scan.bad)
    rows: list[str] = []
    ledgers: dict[Path, dict[str, dict]] = {}
    for p in scan.good:
        record = ledgers.setdefault(p.parent, read_ledger(p.parent)).get(p.name, {})
        if record.get("checksum") and file_checksum(p) != record["checksum"]:
            bad.append(BadShard(p, "its bytes changed since it was written (checksum differs)"))
            continue
        try:
            table, _, _ = read_shard(p, ["path"], vectors=False)
        except UnreadableShardError as exc:
            bad.append(BadShard(p, exc.short_reason))
            continue
        rows.extend(table.column("path").to_pylist())
    errors = read_error_paths(ws)
    embedded = set(rows)
    dups = sorted(p for p, n in Counter(rows).items() if n > 1)
    return ValidationReport(
        str(archive), str(ws.root), len(files), len(embedded), len(errors - embedded),
        dups[:limit], sorted(files - embedded - errors)[:limit], sorted(embedded - files)[:limit],
        [scan.vector_id] if scan.good else [], [{"path": str(b.path), "reason": b.reason} for b in bad])
