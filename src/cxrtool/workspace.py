"""The workspace: where `embed` writes shards and `index`/`search` read them.

Resolution order: --workspace flag, $CXRTOOL_WORKSPACE, ./cxrtool_workspace. Layout::

    <workspace>/embed.json        archive root, model fingerprint, counts (written by embed)
    <workspace>/shards/*.parquet  vectors + ids + metadata (one schema: cxrtool.embed.shards)
    <workspace>/shards/part-IIII-of-NNNN/  the same, per part of a partitioned run (+ its errors.jsonl)
    <workspace>/errors.jsonl      files that could not be embedded: path, kind, stage, reason
    <workspace>/embed-runs.jsonl  one line per finished embed run: counts, per-stage seconds, settings
    <workspace>/index/            generations of the FAISS index + rows + vectors (written by index)
    <workspace>/.locks/           writer locks (cxrtool.locks); quarantine/: shards that did not verify
    <workspace>/reports/          report-text shards (embed-reports), indexed in index-reports/
    <workspace>/serve-cache/      thumbnails rendered by `cxrtool serve` (safe to delete)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.constants import BUNDLED_MODEL, DEFAULT_MODEL_DIR, DEFAULT_WORKSPACE, WORKSPACE_ENV
from cxrtool.errors import WorkspaceError

if TYPE_CHECKING:
    from cxrtool.model.card import ModelCard


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, path: str | Path | None = None) -> Workspace:
        return cls(Path(path or os.environ.get(WORKSPACE_ENV) or DEFAULT_WORKSPACE).expanduser())

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def errors(self) -> Path:
        return self.root / "errors.jsonl"

    @property
    def embed_runs(self) -> Path:
        return self.root / "embed-runs.jsonl"

    @property
    def embed_info(self) -> Path:
        return self.root / "embed.json"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def serve_cache(self) -> Path:
        return self.root / "serve-cache"

    def collection(self, target: str) -> tuple[Path, Path]:
        """(shards folder, index folder) of a searchable collection: "images" or "reports"."""
        if target == "images":
            return self.shards, self.index_dir
        if target == "reports":
            return self.root / "reports", self.root / "index-reports"
        raise ValueError(f"unknown collection {target!r}")

    def recorded_model(self) -> str | None:
        """The model `embed` recorded (a directory, a hub name, or the bundled one), or None."""
        ref = (self.read_json(self.embed_info) or {}).get("model_ref") or None
        return str(DEFAULT_MODEL_DIR) if ref == BUNDLED_MODEL else ref

    def model_of(self, model: Any) -> Any:
        """The model to use on this workspace: ``model`` when given (a name or a loaded model),
        else the one `embed` recorded, else None ($CXRTOOL_MODEL, then the bundled model)."""
        if model is not None and model != "":
            return model
        ref = self.recorded_model()
        if ref and ref.startswith("/") and not Path(ref).is_dir():
            raise WorkspaceError(f"workspace {self.root} was embedded with the model in {ref}, which is not there now",
                                 "pass --model with that model's new location (the vector id is checked)")
        return ref

    def read_json(self, path: Path) -> dict[str, Any] | None:
        """A workspace record, or None when missing or damaged (they are written whole by rename, so
        damage came from outside; every record is re-derivable and its writer writes it again)."""
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):  # UnicodeDecodeError is a ValueError
            return None
        return data if isinstance(data, dict) else None

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)


def check_same_model(card: ModelCard, recorded: str | None, what: str, hint: str, recorded_name: str = "") -> None:
    """Refuse vectors that another model made: ``recorded`` is the vector id a workspace, index or
    shard folder carries (None: nothing recorded, nothing to check), ``what`` names it in the error
    ("the index in DIR was built"), ``recorded_name`` the model it records, if any. Vectors of other
    weights, or of the same weights in another embedding mode, live in another space; this is the
    one place that compares them."""
    if recorded is not None and recorded != card.vector_id:
        if card.stale_pixels(recorded):
            hint = ("embed the archive again into this workspace with `cxrtool embed ARCHIVE --overwrite`, then "
                    "`cxrtool index` (vectors of the old and the new pipeline must not be mixed)")
        named = f" ({recorded_name})" if recorded_name else f" ({recorded[:23]})"
        this = card.provenance.get("name") or card.vector_id[:23] or "unknown"
        raise WorkspaceError(f"{what} with another model{named} than this one ({this})"
                             + card.mismatch_note(recorded), hint)
