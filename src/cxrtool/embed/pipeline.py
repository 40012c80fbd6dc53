"""`cxrtool embed`: an archive folder -> Parquet shards in the workspace, resumable.

This module only wires the pieces: an :class:`~cxrtool.embed.readers.ArchiveReader`, an
:class:`~cxrtool.embed.mapper.ImageMapper` around the model, the
:class:`~cxrtool.embed.writer.ShardWriter` and a distributor (decode workers, optionally one part
of a partitioned run), run by :class:`~cxrtool.embed.runner.Runner`. What is already done is read
back from the shards and errors.jsonl, so a killed run resumes with no duplicates and no gaps.
Every file that is not embedded gets one errors.jsonl row (:mod:`cxrtool.embed.errors_log`). Each
finished run appends its summary (counts and per-stage seconds, no per-file rows) to
``<workspace>/embed-runs.jsonl``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cxrtool import __version__
from cxrtool.constants import SHARD_ROWS
from cxrtool.embed.distributors import DecodeWorkers, Distributor, Parts, Threads
from cxrtool.embed.errors_log import STAGES, error_line, read_error_paths, read_errors
from cxrtool.embed.manifest_join import load_manifest_join
from cxrtool.embed.mapper import ImageDecoder, ImageMapper, image_record
from cxrtool.embed.quarantine import clear, quarantine, verified_shards
from cxrtool.embed.readers import ArchiveReader, DicomWebReader
from cxrtool.embed.runner import Runner
from cxrtool.embed.shards import BadShard, ShardScan, UnreadableShardError, read_shard
from cxrtool.embed.writer import ShardWriter
from cxrtool.errors import WorkspaceError
from cxrtool.io.classify import HeaderFilter, is_chest
from cxrtool.io.dicomweb import is_dicomweb, parse_source, source_label
from cxrtool.locks import workspace_lock
from cxrtool.model.dual import DualEncoder
from cxrtool.model.factory import load_model
from cxrtool.model.onnx_image import RUNTIMES
from cxrtool.privacy import resolve_key
from cxrtool.workspace import Workspace, check_same_model

# Names other modules import from here.
__all__ = ["STAGES", "EmbedSummary", "default_batch_size", "default_workers", "embed_archive", "image_record",
           "read_error_paths", "read_errors"]


@dataclass
class EmbedSummary:
    archive: str
    workspace: str
    found: int = 0  # every file this run accounts for (images and other files)
    other_files: int = 0  # of which not candidate images (not images, hidden, links): each has an errors.jsonl row
    already_done: int = 0
    embedded: int = 0
    failed: int = 0  # in this run
    failed_earlier: int = 0  # files that failed in an earlier run and were not retried (still not embedded)
    not_images: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count (filters, duplicates)
    # DICOMweb: instances the server-side query left out, per reason (never downloaded, no error rows)
    filtered: dict[str, int] = field(default_factory=dict)
    study_rules: dict[str, int] = field(default_factory=dict)  # how rows got their study: dicom, nih, file, ...
    # embedded rows whose header names a body part that is not the chest (BodyPartExamined -> count)
    other_body_parts: dict[str, int] = field(default_factory=dict)
    shards_written: int = 0
    seconds: float = 0.0
    discover_seconds: float = 0.0  # walking the archive and reading back what earlier runs did
    wait_seconds: float = 0.0  # main process waiting for decoded batches (read, hash, header, decode)
    model_seconds: float = 0.0
    write_seconds: float = 0.0
    images_per_second: float = 0.0
    image_runtime: str = ""  # what encoded the images on a CPU: torch or onnxruntime, and why
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _earlier_runs(ws: Workspace, scan: ShardScan, out_dir: Path) -> tuple[set[str], dict[str, str]]:
    """What the workspace's verified shards (all parts) already hold, from one read of them: the
    embedded paths and SOPInstanceUID -> path of the instances embedded (a second export of one is
    skipped). A shard whose data turns out unreadable here is quarantined like one that failed
    verification."""
    paths: list[str] = []
    sops: list[str | None] = []
    for shard in scan.good:
        try:
            table = read_shard(shard, ["path", "sop_uid"], vectors=False)[0]
        except UnreadableShardError as exc:
            quarantine(ws, [BadShard(shard, exc.short_reason)], out_dir)
            continue
        paths.extend(table.column("path").to_pylist())
        sops.extend(table.column("sop_uid").to_pylist())
    return set(paths), {sop: path for sop, path in zip(sops, paths, strict=True) if sop}


def _check_workspace(ws: Workspace, archive: Path, model: DualEncoder, overwrite: bool, scope: Path) -> None:
    """Refuse a workspace of another archive/model; with ``overwrite``, clear ``scope`` (the whole
    workspace but its locks, or only this part's folder in a partitioned run)."""
    info = ws.read_json(ws.embed_info)
    if overwrite:
        clear(ws, scope)
        if scope == ws.root:
            return
    if info is None:
        return
    if info.get("archive") != str(archive):
        raise WorkspaceError(f"workspace {ws.root} holds embeddings of another archive ({info.get('archive')})",
                             "use --workspace DIR (or $CXRTOOL_WORKSPACE) for this archive, or --overwrite")
    check_same_model(model.card, info.get("model_fingerprint"), f"workspace {ws.root} was embedded",
                     "use --workspace DIR for this model, or --overwrite to start again", info.get("model"))


def default_workers(device: str = "cpu") -> int:
    """Decode processes. On a CPU they share the cores with the model's threads, so use half of
    them, and none on a 2-core machine (measured there: 0 workers 29.9 img/s vs 1 worker 26.9,
    docs/benchmarks.md). On a GPU box decoding is the bottleneck (an H100 embeds ~1,600 img/s
    end to end on EfficientNet-Lite0; 8 decode workers fed it 112): use every core but one."""
    cpus = os.cpu_count() or 2
    if device.startswith("cuda"):
        return max(1, min(32, cpus - 1))
    return 0 if cpus <= 2 else min(8, cpus // 2)


ONNX_CPU_BATCH = 8  # see default_batch_size


def default_batch_size(device: str = "cpu", model: DualEncoder | None = None) -> int:
    """Images per batch. Small batches are fastest on a CPU (cache-bound: EfficientNet-Lite0 on 2
    cores ran 69 img/s at batch 4 vs 36 img/s at 32); GPUs want large ones. A ``flip_pair`` model
    runs each image twice (it and its mirror) in one forward pass, so on a CPU it takes half as
    many images per batch (the default model v4: 17.6 img/s at 2 vs 14.8 at 4). ONNX Runtime is the
    other way round (it keeps its fused kernels busy with more images): 8, measured in
    docs/benchmarks.md (the default model: 38 img/s at 2, 46 at 8)."""
    if device.startswith("cuda"):
        return 64
    if model is not None and model.onnx_active:
        return ONNX_CPU_BATCH
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
    manifest: str | Path | None = None,
    num_parts: int = 1,
    part_index: int = 0,
    progress: bool = True,
    wait: bool = True,
    connections: int = 4,
    engine: str = "local",
    ray_address: str | None = None,
    ray_actors: int = 1,
    gpus_per_worker: float = 0.0,
    threads: int | None = None,
    since: str | None = None,
    until: str | None = None,
    studies: tuple[str, ...] | None = None,
    runtime: str = "auto",
) -> EmbedSummary:
    """Embed every image under ``archive`` into shards in the workspace; resumes by default.

    ``num_parts``/``part_index`` split one archive across independent processes (SLURM array
    tasks, Kubernetes indexed jobs, torchrun ranks) with no coordination: each file belongs to
    exactly one part by a hash of its path, and each part writes to its own sub-folder.
    ``validate_workspace`` then checks that the union is exactly the archive.

    One writer at a time: the run holds the workspace's embed lock (a part holds its own part's),
    and waits for another holder, or with ``wait=False`` refuses at once (:mod:`cxrtool.locks`).
    Shards that fail verification are moved to ``<workspace>/quarantine/`` and their files embedded anew.

    ``archive`` may be a DICOMweb source, ``dicomweb+http(s)://HOST:PORT/PATH``
    (:mod:`cxrtool.io.dicomweb`): its instances are listed by QIDO-RS (``since``/``until`` on
    StudyDate, or ``studies``; modality and body part from ``header_filter`` at series level) and
    retrieved by WADO-RS in ``connections`` threads; each instance's identity is its WADO-RS path,
    so resume, incremental runs and validate work as for a folder.

    ``engine="ray"`` runs decoding in Ray tasks and the model in a Ray actor pool
    (:mod:`cxrtool.embed.ray_engine`; ``ray_address`` None starts a local cluster); this process
    still holds the lock and writes every shard.

    ``runtime`` picks the CPU engine of the image side (:meth:`DualEncoder.use_runtime`): ``auto``
    runs it on ONNX Runtime when its export matches torch on the first batch (else torch, with the
    reason in the summary's ``image_runtime``), ``onnx`` insists, ``torch`` never tries. On a GPU it is
    always torch.
    """
    if runtime not in RUNTIMES:
        raise WorkspaceError(f"unknown runtime {runtime!r}", f"use one of {', '.join(RUNTIMES)}")
    if not (num_parts >= 1 and 0 <= part_index < num_parts):
        raise WorkspaceError(f"part {part_index} of {num_parts} is not a valid partition",
                             "use --num-parts N --part-index i with 0 <= i < N")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    header_filter = header_filter or HeaderFilter()
    if is_dicomweb(archive):
        if manifest:
            raise WorkspaceError("--manifest joins files of a folder; a DICOMweb source takes studies, patients "
                                 "and views from the DICOM headers", "leave --manifest out")
        base = parse_source(str(archive))
        archive = source_label(base)
        reader: Any = DicomWebReader(base, header_filter, since, until, studies, connections)
        distributor: Distributor = Threads(connections)
    else:
        if since or until or studies:
            raise WorkspaceError("--since, --until and --study query a DICOMweb source; a folder is walked whole",
                                 "leave them out for a folder")
        if "://" in str(archive):  # a URL without dicomweb+ (never echoed: it may carry credentials)
            raise WorkspaceError("the archive looks like a URL, not a folder",
                                 "a PACS is read over DICOMweb: write dicomweb+http(s)://HOST:PORT/PATH")
        archive = Path(archive).resolve()
        if not archive.exists():
            raise WorkspaceError(f"{archive}: no such file or folder")
        reader = ArchiveReader(archive)
        distributor = None
    ws = Workspace.resolve(workspace)
    if not isinstance(model, DualEncoder):
        model = load_model(ws.model_of(model), device=device)
    model.to(device).eval()
    if engine not in ("local", "ray"):
        raise WorkspaceError(f"unknown engine {engine!r}", "use --engine local or --engine ray")
    if engine == "ray":
        from cxrtool.embed.ray_engine import RayDistributor, require_ray

        require_ray()
        distributor = RayDistributor(model, ray_address, workers, ray_actors, gpus_per_worker, threads, device,
                                     resolve_key(pseudonym_key), runtime if device == "cpu" else "torch")
        workers = workers or 0
    workers = default_workers(device) if workers is None else workers
    if distributor is None:
        distributor = DecodeWorkers(workers, pin_memory=device.startswith("cuda"))
    elif isinstance(distributor, Threads):
        workers = connections  # the run log's "workers": the DICOMweb fetch threads
    out_dir = ws.shards
    if num_parts > 1:  # a part keeps its own folder (shards + errors.jsonl); --overwrite clears only that
        distributor = Parts(part_index, num_parts, distributor)
        out_dir = ws.shards / distributor.name
    part = distributor.name if num_parts > 1 else None
    # The Ray engine's actors choose their own runtime; this process only writes.
    cpu_runtime = runtime if device == "cpu" and engine == "local" else "torch"
    with model.runtime_scope(cpu_runtime), workspace_lock(ws.root, "embed-images", "cxrtool embed", wait, part):
        return _embed_locked(ws, archive, reader, model, distributor, out_dir, device, workers, batch_size,
                             shard_rows, overwrite, retry_errors, header_filter, pseudonym_key, keep_study_date,
                             float16, manifest, f"{part_index}/{num_parts}", progress, engine)


def _embed_locked(ws: Workspace, archive: Path | str, reader: Any, model: DualEncoder, distributor: Distributor,
                  out_dir: Path, device: str, workers: int, batch_size: int | None, shard_rows: int,
                  overwrite: bool, retry_errors: bool, header_filter: HeaderFilter | None,
                  pseudonym_key: str | None, keep_study_date: bool, float16: bool, manifest: str | Path | None,
                  part: str, progress: bool, engine: str = "local") -> EmbedSummary:
    """The embed run proper, with the workspace's (or this part's) writer lock held."""
    _check_workspace(ws, archive, model, overwrite, out_dir if out_dir != ws.shards else ws.root)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.rglob(".shard-*.tmp"):  # half-written by a killed run: never counted
        stale.unlink()
    t_start = time.perf_counter()
    scan = verified_shards(ws, ws.shards, model.card, out_dir)
    embedded, seen_sops = _earlier_runs(ws, scan, out_dir)
    errors = read_errors(ws)
    # a file listed in errors.jsonl is done (one reason, not retried) unless asked to retry
    done = embedded if retry_errors else embedded | {r["path"] for r in errors}
    failed_before = set() if retry_errors else {r["path"] for r in errors if r["kind"] == "error"} - embedded
    done_seconds = time.perf_counter() - t_start
    key = resolve_key(pseudonym_key)
    join = load_manifest_join(manifest, key) if manifest else None
    decoder = ImageDecoder(model.card.image, header_filter or HeaderFilter(), key, keep_study_date, join)
    writer = ShardWriter(out_dir, model.card.vector_id, "float16" if float16 else "float32", shard_rows,
                         errors_path=ws.errors if out_dir == ws.shards else out_dir / "errors.jsonl")
    ws.write_json(ws.embed_info, {"archive": str(archive), "model": model.card.provenance.get("name", ""),
                                  "model_ref": model.origin or None, "model_fingerprint": model.card.vector_id,
                                  "embed_dim": model.card.output_dim,
                                  **({"query": {"modalities": list(header_filter.modalities or []) or None,
                                                "body_parts": list(header_filter.body_parts or []) or None}}
                                     if isinstance(archive, str) else {})})
    batch_size = batch_size or default_batch_size(device, model)
    runner = Runner(reader, ImageMapper(model, decoder, seen_sops), writer, distributor, batch_size, done)
    stats = runner.run(progress=progress)
    if join is not None and part == "0/1":  # manifest images with no file: one errors.jsonl row each, once
        matched = {id(e) for rel in stats.keys if (e := join.lookup(rel, archive / rel)) is not None}
        missing = [p for p in join.unmatched(matched) if p not in done]
        reason = f"in the manifest {join.name}, but no such file in the archive"
        with open(ws.errors, "a") as fh:
            fh.writelines(error_line(p, "error", "discover", reason) for p in missing)
        writer.failed += len(missing)
        writer.failures += [{"path": p, "stage": "discover", "reason": reason} for p in missing[:10]]
    earlier = len(failed_before & stats.keys)  # this run's share only (a part counts its own files)
    summary = EmbedSummary(str(archive), str(ws.root), found=stats.found, other_files=stats.other,
                           already_done=stats.already_done,
                           embedded=writer.written, failed=writer.failed, failed_earlier=earlier,
                           not_images=writer.not_images,
                           skipped=writer.skipped, filtered=dict(getattr(reader, "filtered", {})),
                           study_rules=dict(writer.study_rules),
                           other_body_parts={p: n for p, n in writer.body_parts.most_common() if p and not is_chest(p)},
                           shards_written=writer.shards_written,
                           discover_seconds=done_seconds + stats.list_seconds,
                           wait_seconds=stats.read_seconds, model_seconds=stats.map_seconds,
                           write_seconds=writer.write_seconds, failures=writer.failures)
    summary.image_runtime = (model.runtime_note or model.runtime) if engine == "local" else (
        f"per Ray actor: {model.runtime}")
    summary.seconds = time.perf_counter() - t_start
    summary.images_per_second = summary.embedded / summary.seconds if summary.seconds else 0.0
    _append_run_log(ws, summary, model, engine=engine, device=device, workers=workers, batch_size=batch_size,
                    part=part)
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
