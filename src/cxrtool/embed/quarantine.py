"""Moving damaged shards aside (never deleting them), and clearing a workspace for --overwrite.

A shard that does not verify (cut short, unreadable, a foreign Parquet file, a stray of another
model) is moved to ``<workspace>/quarantine/<time>/<its path in the workspace>`` and recorded in
``quarantine/quarantine.jsonl`` with the reason. Its files are then no longer "done", so the embed
run that moved it embeds them again: nothing is lost and nothing is counted twice. Only a writer
holding the lock of the folder calls this (``embed``), so two runs never move the same file.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool import notes
from cxrtool.embed.shards import BadShard, ShardScan, scan_shards
from cxrtool.locks import LOCK_DIR
from cxrtool.workspace import Workspace, check_same_model

if TYPE_CHECKING:
    from cxrtool.model.card import ModelCard

QUARANTINE = "quarantine"


def quarantine(ws: Workspace, bad: Iterable[BadShard], scope: Path, say=None) -> list[Path]:
    """Move the ``bad`` shards that lie under ``scope`` aside; one note line each on stderr.
    Returns where they went."""
    say = say or notes.say
    moved: list[Path] = []
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    for shard in bad:
        if not shard.path.is_relative_to(scope) or not shard.path.exists():
            continue
        rel = shard.path.relative_to(ws.root) if shard.path.is_relative_to(ws.root) else Path(shard.path.name)
        target = ws.root / QUARANTINE / stamp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(shard.path, target)
        with open(ws.root / QUARANTINE / "quarantine.jsonl", "a") as fh:
            fh.write(json.dumps({"at": stamp, "shard": rel.as_posix(), "moved_to": str(target.relative_to(ws.root)),
                                 "reason": shard.reason}) + "\n")
        say(f"note: {shard.path} did not verify ({shard.reason}): moved to {target}; its files are embedded again")
        moved.append(target)
    return moved


def verified_shards(ws: Workspace, directory: Path, card: ModelCard, scope: Path, kind: str = "image") -> ShardScan:
    """Verify a collection's shards for a writer about to add to it, and move those that fail (torn,
    foreign, a stray of another model) aside from ``scope``, so their files are embedded again.
    A collection whose verified shards are all another model's is refused instead: that is another
    model's workspace, not damage."""
    found = scan_shards(directory, kind=kind)
    if found.good:
        check_same_model(card, found.vector_id, f"the shards in {directory} were embedded",
                         "use --workspace DIR for this model, or --overwrite to start again")
    scan = scan_shards(directory, card.vector_id, kind=kind)
    quarantine(ws, scan.bad, scope)
    return scan


def clear(ws: Workspace, scope: Path) -> None:
    """--overwrite: remove ``scope`` (the workspace, or one part's folder), keeping the lock files
    that the running writer holds (removing them would let a second writer lock a new file)."""
    if scope != ws.root:
        shutil.rmtree(scope, ignore_errors=True)
        return
    if not ws.root.is_dir():
        return
    for child in ws.root.iterdir():
        if child.name == LOCK_DIR:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
