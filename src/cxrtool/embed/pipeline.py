"""archive folder -> decode workers -> batched model -> Parquet shards, resumable.

Resume rule (img2dataset's): a shard is written atomically and only when complete, and the set of
done files is read back from the shards themselves (plus errors.jsonl for files that failed), so
a killed run restarts where the last complete shard ended, with no duplicates and no gaps.

Each file is read once: a worker reads its bytes, hashes them, and the header check and the
decode both parse those bytes. Every file that is not embedded gets one errors.jsonl row
``{"path", "kind", "stage", "reason"}``: kind "error" | "not_image" | "skipped", stage one of
``STAGES``. Each finished run appends its summary (counts and per-stage seconds, no per-file
rows) to ``<workspace>/embed-runs.jsonl``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxrtool import __version__
from cxrtool.constants import SHARD_ROWS
from cxrtool.embed.shards import content_hash, image_id, next_shard_path, read_shard_metadata, write_shard
from cxrtool.errors import DecodeError, NotAnImageError, WorkspaceError
from cxrtool.io.classify import HeaderFilter, read_dicom_header
from cxrtool.io.decode import decode_image
from cxrtool.io.discover import ArchiveFile, discover_archive
from cxrtool.model.card import ImageSpec
from cxrtool.model.directory import load_model
from cxrtool.model.dual import DualEncoder
from cxrtool.model.transform import preprocess
from cxrtool.privacy import resolve_key
from cxrtool.workspace import Workspace

MAX_FAILURES_KEPT = 100

# Where a file dropped out, for errors.jsonl: "discover" (unreadable while looking for the DICOM
# signature, a folder that cannot be listed, a DICOMDIR-referenced file missing), "read" (the
# bytes could not be read), "header" (unreadable DICOM header, filtered out, duplicate instance),
# "decode" (the pixels could not be decoded).
STAGES = ("discover", "read", "header", "decode")


@dataclass
class EmbedSummary:
    archive: str
    workspace: str
    found: int = 0
    already_done: int = 0
    embedded: int = 0
    failed: int = 0
    not_images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (filters, duplicates)
    shards_written: int = 0
    seconds: float = 0.0
    discover_seconds: float = 0.0  # walking the archive and reading back what earlier runs did
    wait_seconds: float = 0.0  # main process waiting for decoded batches (read, hash, header, decode)
    model_seconds: float = 0.0
    write_seconds: float = 0.0
    images_per_second: float = 0.0
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def image_record(f: ArchiveFile, meta: dict, shape: tuple[int, ...], digest: str, identity: dict | None = None) -> dict:
    """Shard row metadata for one image, from PHI-safe header fields (+ pseudonyms, if keyed);
    ``digest`` is the :func:`~cxrtool.embed.shards.content_hash` of the file's bytes."""
    study = meta.get("StudyInstanceUID") or (str(Path(f.rel).parent) if "/" in f.rel else "")
    return {
        "id": image_id(f.rel),
        "path": f.rel,
        "study_key": study,
        "series_uid": meta.get("SeriesInstanceUID"),
        "sop_uid": meta.get("SOPInstanceUID"),
        "view": str(meta.get("ViewPosition", "") or "").upper(),
        "modality": meta.get("Modality", "") or "",
        "body_part": str(meta.get("BodyPartExamined", "") or "").upper(),
        "file_format": f.kind,
        "transfer_syntax": meta.get("TransferSyntaxUID"),
        "rows": int(meta.get("Rows") or shape[0]),  # the stored size, not the reduced decode's
        "columns": int(meta.get("Columns") or shape[1]),
        "content_hash": digest,
        **(identity or {}),
    }


class _DecodeDataset(Dataset):
    """Runs in the loader workers: one read of the file's bytes, content hash, header check,
    decode + the card's eval transform. Errors and skips are returned as data, ``(kind, stage,
    reason)``, so one bad file never stops the run."""

    def __init__(self, files: list[ArchiveFile], spec: ImageSpec, header_filter: HeaderFilter,
                 pseudonym_key: str | None = None, keep_study_date: bool = False) -> None:
        self.files = files
        self.spec = spec
        self.filter = header_filter
        self.pseudonym_key = pseudonym_key
        self.keep_study_date = keep_study_date

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        f = self.files[i]
        try:
            data = f.path.read_bytes()
        except OSError as exc:  # reason without the file name: absolute paths stay out of outputs
            return None, {"path": f.rel}, ("error", "read",
                                           f"cannot read the file ({exc.strerror or type(exc).__name__})")
        identity = None
        stage = "header"
        try:
            digest = content_hash(data)
            if f.kind == "dicom":
                header = read_dicom_header(f.path, self.pseudonym_key, self.keep_study_date, data=data)
                identity = {k: header.get(k) for k in ("patient_key", "accession_key", "study_date")}
                reason = self.filter.skip_reason(header)
                if reason:
                    kind = "not_image" if reason.startswith("not an image") else "skipped"
                    return None, {"path": f.rel}, (kind, stage, reason)
            stage = "decode"
            image = decode_image(f.path, min_side=self.spec.input_size, data=data)
            record = image_record(f, image.meta, image.pixels.shape, digest, identity)
            return preprocess(image.pixels, self.spec), record, None
        except NotAnImageError as exc:
            return None, {"path": f.rel}, ("not_image", stage, exc.short_reason)
        except DecodeError as exc:
            return None, {"path": f.rel}, ("error", stage, exc.short_reason)
        except Exception as exc:  # a decoder bug must not end a million-file run
            return None, {"path": f.rel}, ("error", stage, f"{type(exc).__name__}: {exc}")


def _collate(items):
    return items


def _done_paths(ws: Workspace, retry_errors: bool) -> set[str]:
    """Paths already embedded or listed with a reason anywhere in the workspace (all parts)."""
    done = set(read_shard_metadata(ws.shards, ["path"]).column("path").to_pylist())
    if not retry_errors:
        done.update(read_error_paths(ws))
    return done


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


def _check_workspace(ws: Workspace, archive: Path, model: DualEncoder, overwrite: bool, scope: Path) -> None:
    """Refuse a workspace of another archive/model; with ``overwrite``, clear ``scope`` (the whole
    workspace, or only this part's folder in a partitioned run)."""
    info = ws.read_json(ws.embed_info)
    if info is None:
        return
    if overwrite:
        shutil.rmtree(scope, ignore_errors=True)
        if scope == ws.root:
            return
    if info.get("archive") != str(archive):
        raise WorkspaceError(f"workspace {ws.root} holds embeddings of another archive ({info.get('archive')})",
                             "use --workspace DIR (or $CXRTOOL_WORKSPACE) for this archive, or --overwrite")
    if info.get("model_fingerprint") != model.card.vector_id:
        raise WorkspaceError(f"workspace {ws.root} was embedded with another model ({info.get('model')})"
                             + model.card.mismatch_note(info.get("model_fingerprint", "")),
                             "use --workspace DIR for this model, or --overwrite to start again")


def part_dir_name(index: int, total: int) -> str:
    return f"part-{index:04d}-of-{total:04d}"


def default_workers(device: str = "cpu") -> int:
    """Decode processes. On a CPU they share the cores with the model's threads, so use half of
    them, and none on a 2-core machine (measured there: 0 workers 29.9 img/s vs 1 worker 26.9,
    docs/benchmarks.md). On a GPU box decoding is the bottleneck (an H100 embeds ~1,600 img/s
    end to end on EfficientNet-Lite0; 8 decode workers fed it 112): use every core but one."""
    cpus = os.cpu_count() or 2
    if device.startswith("cuda"):
        return max(1, min(32, cpus - 1))
    return 0 if cpus <= 2 else min(8, cpus // 2)


def default_batch_size(device: str = "cpu", model: DualEncoder | None = None) -> int:
    """Images per batch. Small batches are fastest on a CPU (cache-bound: EfficientNet-Lite0 on 2
    cores ran 69 img/s at batch 4 vs 36 img/s at 32); GPUs want large ones. A ``flip_pair`` model
    runs each image twice (it and its mirror) in one forward pass, so on a CPU it takes half as
    many images per batch (the default model v4: 17.6 img/s at 2 vs 14.8 at 4)."""
    if device.startswith("cuda"):
        return 64
    return 2 if model is not None and model.card.embedding == "flip_pair" else 4


def embed_archive(
    archive: str | Path,
    workspace: str | Path | None = None,
    model: DualEncoder | str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "cpu",
    shard_rows: int = SHARD_ROWS,
    overwrite: bool = False,
    retry_errors: bool = False,
    header_filter: HeaderFilter | None = None,
    pseudonym_key: str | None = None,
    keep_study_date: bool = False,
    float16: bool = False,
    num_parts: int = 1,
    part_index: int = 0,
    progress: bool = True,
) -> EmbedSummary:
    """Embed every image under ``archive`` into shards in the workspace; resumes by default.

    ``num_parts``/``part_index`` split one archive across independent processes (SLURM array
    tasks, Kubernetes indexed jobs, torchrun ranks) with no coordination: each file belongs to
    exactly one part by a hash of its path, and each part writes to its own sub-folder.
    ``validate_workspace`` then checks that the union is exactly the archive.
    """
    if not (num_parts >= 1 and 0 <= part_index < num_parts):
        raise WorkspaceError(f"part {part_index} of {num_parts} is not a valid partition",
                             "use --num-shards N --shard-index i with 0 <= i < N")
    from tqdm import tqdm

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    archive = Path(archive).resolve()
    if not archive.exists():
        raise WorkspaceError(f"{archive}: no such file or folder")
    ws = Workspace.resolve(workspace)
    if not isinstance(model, DualEncoder):
        model = load_model(model, device=device)
    model.to(device).eval()
    out_dir = ws.shards if num_parts == 1 else ws.shards / part_dir_name(part_index, num_parts)
    errors_path = ws.errors if num_parts == 1 else out_dir / "errors.jsonl"
    _check_workspace(ws, archive, model, overwrite, ws.root if num_parts == 1 else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".shard-*.tmp"):  # half-written by a killed run: never counted
        stale.unlink()
    t_start = time.perf_counter()
    files = [f for f in discover_archive(archive) if num_parts == 1 or image_id(f.rel) % num_parts == part_index]
    summary = EmbedSummary(str(archive), str(ws.root), found=len(files))
    done = _done_paths(ws, retry_errors)
    # SOPInstanceUID -> path: the same DICOM instance exported twice is embedded once
    seen_sops = {sop: path for sop, path in zip(*(read_shard_metadata(ws.shards, ["sop_uid", "path"]).column(c)
                                                    .to_pylist() for c in ("sop_uid", "path")), strict=True) if sop}
    todo = [f for f in files if f.rel not in done]
    summary.already_done = len(files) - len(todo)
    problems = [f for f in todo if f.problem]  # found unusable by discovery: errors rows, no decode
    todo = [f for f in todo if not f.problem]
    summary.discover_seconds = time.perf_counter() - t_start
    ws.write_json(ws.embed_info, {"archive": str(archive), "model": model.card.provenance.get("name", ""),
                                  "model_fingerprint": model.card.vector_id, "embed_dim": model.card.output_dim})
    workers = default_workers(device) if workers is None else workers
    batch_size = batch_size or default_batch_size(device, model)
    dataset = _DecodeDataset(todo, model.card.image, header_filter or HeaderFilter(), resolve_key(pseudonym_key),
                             keep_study_date)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, pin_memory=device.startswith("cuda"),
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    rows: list[dict] = []
    vecs: list[np.ndarray] = []
    errors_fh = open(errors_path, "a")  # noqa: SIM115 - kept open across the loop, closed below

    def log_error(path: str, kind: str, stage: str, reason: str) -> None:
        errors_fh.write(json.dumps({"path": path, "kind": kind, "stage": stage, "reason": reason}) + "\n")
        if kind == "not_image":
            summary.not_images += 1
        elif kind == "skipped":
            key = reason.split(" (same instance")[0]
            summary.skipped[key] = summary.skipped.get(key, 0) + 1
        else:
            summary.failed += 1
            if len(summary.failures) < MAX_FAILURES_KEPT:  # all of them are in errors.jsonl
                summary.failures.append({"path": path, "stage": stage, "reason": reason})

    def flush() -> None:
        nonlocal rows, vecs
        if not rows:
            return
        t = time.perf_counter()
        write_shard(next_shard_path(out_dir), rows, np.concatenate(vecs), model.card.vector_id,
                    "float16" if float16 else "float32")
        errors_fh.flush()
        summary.write_seconds += time.perf_counter() - t
        summary.shards_written += 1
        rows, vecs = [], []

    bar = tqdm(total=len(todo), desc="embedding", unit="img", disable=not progress or not todo)
    try:
        for f in problems:
            log_error(f.rel, "error", "discover", f.problem or "")
        t_wait = time.perf_counter()
        for batch in loader:
            summary.wait_seconds += time.perf_counter() - t_wait
            good = []
            for i, (x, rec, err) in enumerate(batch):
                sop = rec.get("sop_uid") if err is None else None
                if sop and sop in seen_sops:
                    batch[i] = (None, rec, ("skipped", "header",
                                            f"duplicate SOPInstanceUID (same instance as {seen_sops[sop]})"))
                elif err is None:
                    if sop:
                        seen_sops[sop] = rec["path"]
                    good.append((x, rec))
            for _, rec, err in batch:
                if err is not None:
                    log_error(rec["path"], *err)
            if good:
                t = time.perf_counter()
                vecs.append(model.encode_pixels(torch.stack([x for x, _ in good])))
                summary.model_seconds += time.perf_counter() - t
                rows.extend(rec for _, rec in good)
                summary.embedded += len(good)
            bar.update(len(batch))
            if len(rows) >= shard_rows:
                flush()
            t_wait = time.perf_counter()
        flush()
    finally:
        bar.close()
        errors_fh.close()
    summary.seconds = time.perf_counter() - t_start
    summary.images_per_second = summary.embedded / summary.seconds if summary.seconds else 0.0
    _append_run_log(ws, summary, model, device=device, workers=workers, batch_size=batch_size,
                    part=f"{part_index}/{num_parts}")
    return summary


def _append_run_log(ws: Workspace, summary: EmbedSummary, model: DualEncoder, **settings: object) -> None:
    """One JSON line per finished run in ``<workspace>/embed-runs.jsonl``: counts, per-stage
    seconds and settings, never per-file rows (those, with archive-relative paths, are in
    errors.jsonl), so the log holds nothing that could name a patient."""
    entry = {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cxrtool_version": __version__,
             "model": model.card.provenance.get("name", ""), "model_fingerprint": model.card.vector_id, **settings,
             **{k: round(v, 3) if isinstance(v, float) else v for k, v in summary.to_dict().items()
                if k != "failures"}}
    with open(ws.embed_runs, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
