"""The shard format: the one definition of what an embedded image row holds.

Each shard is a Parquet file whose rows carry the vector *and* its identity, so nothing depends
on row position (clip-retrieval's npy + parquet pairing does, and breaks). Columns:

==============  ===================  ==========================================================
id              int64                stable id: hash of the archive-relative path (FAISS id)
path            string               path relative to the archive root
study_key       string               StudyInstanceUID, else the file's folder
series_uid      string               SeriesInstanceUID (DICOM) or null
sop_uid         string               SOPInstanceUID (DICOM) or null
view            string               ViewPosition (PA/AP/LL/LATERAL...) or from the label file
modality        string               CR/DX/... (DICOM) or "" for PNG/JPEG
body_part       string               BodyPartExamined (DICOM) or ""
file_format     string               "dicom" | "raster"
transfer_syntax string               DICOM transfer syntax UID or null
rows, columns   int32                stored image size
content_hash    string               "xxh3-128:<hex>" of the file's bytes (finds re-exported copies)
patient_key     string               keyed hash of PatientID (cxrtool.privacy: the given or installation key)
accession_key   string               keyed hash of AccessionNumber, same key
study_date      string               YYYYMMDD, only with --keep-study-date, else null
labels          map<string, int8>    labels from `embed --manifest` (1 / 0 / -1), else null (format 2)
embedding       fixed_size_list      L2-normalised image vector, float32 (or float16 by flag)
==============  ===================  ==========================================================

No patient names, birth dates, raw patient IDs or accession numbers are ever written (see
``cxrtool.io.dicom_header.SAFE_DICOM_FIELDS`` and ``cxrtool.privacy``). File metadata records the
model's vector id under ``model_fingerprint`` (the weights' fingerprint, ``+flip_pair`` for a model
that writes flip-paired vectors, and the pixel tag ``+px2.<spec hash>``: ``ModelCard.vector_id``)
and the embedding dtype.

Shards are written by :func:`write_shard` and read only by :func:`read_shard` (through
:func:`read_shard_metadata`, :func:`read_shard_vectors` and :func:`read_collection`), so index,
search, evaluation and ``cxrtool validate`` read them one way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from cxrtool.errors import WorkspaceError

SHARD_SCHEMA_VERSION = "cxrtool-shard/2"
READABLE_VERSIONS = ("cxrtool-shard/1", SHARD_SCHEMA_VERSION)  # format 1: no labels column (read as null)
META_COLUMNS = ["id", "path", "study_key", "series_uid", "sop_uid", "view", "modality", "body_part",
                "file_format", "transfer_syntax", "rows", "columns", "content_hash", "patient_key", "accession_key",
                "study_date", "labels"]


def _embedding_field(dim: int, dtype: str) -> pa.Field:
    return pa.field("embedding", pa.list_(pa.float16() if dtype == "float16" else pa.float32(), dim))


def shard_schema(dim: int, vector_id: str, dtype: str = "float32") -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),
            pa.field("study_key", pa.string()),
            pa.field("series_uid", pa.string()),
            pa.field("sop_uid", pa.string()),
            pa.field("view", pa.string()),
            pa.field("modality", pa.string()),
            pa.field("body_part", pa.string()),
            pa.field("file_format", pa.string()),
            pa.field("transfer_syntax", pa.string()),
            pa.field("rows", pa.int32()),
            pa.field("columns", pa.int32()),
            pa.field("content_hash", pa.string()),
            pa.field("patient_key", pa.string()),
            pa.field("accession_key", pa.string()),
            pa.field("study_date", pa.string()),
            pa.field("labels", pa.map_(pa.string(), pa.int8())),
            _embedding_field(dim, dtype),
        ],
        metadata={"cxrtool": SHARD_SCHEMA_VERSION, "model_fingerprint": vector_id, "embedding_dtype": dtype},
    )


def content_hash(data: bytes) -> str:
    """The file's content hash, named by its algorithm. xxh3-128, not sha256: it finds identical
    copies (nothing adversarial) and runs at memory speed, where sha256 cost ~6 ms per 8 MB DICOM."""
    return "xxh3-128:" + xxhash.xxh3_128_hexdigest(data)


def image_id(rel_path: str) -> int:
    """Stable non-negative int64 id of an archive-relative path."""
    return int.from_bytes(hashlib.sha1(rel_path.encode()).digest()[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


# Report-text shards (embed-reports): the same guarantees, for image->report search.
REPORT_SHARD_SCHEMA_VERSION = "cxrtool-report-shard/1"
REPORT_META_COLUMNS = ["id", "report_key", "study_key", "source", "text"]


def report_shard_schema(dim: int, vector_id: str, dtype: str = "float32") -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("report_key", pa.string(), nullable=False),
            pa.field("study_key", pa.string()),
            pa.field("source", pa.string()),
            pa.field("text", pa.string()),
            _embedding_field(dim, dtype),
        ],
        metadata={"cxrtool": REPORT_SHARD_SCHEMA_VERSION, "model_fingerprint": vector_id, "embedding_dtype": dtype},
    )


LEDGER = "shards.jsonl"  # per shard folder: what the writer wrote (name, rows, bytes, vector id, checksum)


def write_shard(path: Path, rows: list[dict], vectors: np.ndarray, vector_id: str, dtype: str = "float32",
                kind: str = "image") -> int:
    """Write one shard atomically (temp file + rename): a shard exists whole or not at all. Then
    record it in the folder's ledger (:data:`LEDGER`), which is what verification compares with.
    Returns the shard's size in bytes. A failed write (a full disk) leaves no temp file behind."""
    if kind == "report":
        schema, columns = report_shard_schema(vectors.shape[1], vector_id, dtype), REPORT_META_COLUMNS
    else:
        schema, columns = shard_schema(vectors.shape[1], vector_id, dtype), META_COLUMNS
    cols = {name: [r.get(name) for r in rows] for name in columns}
    if "labels" in cols:
        cols["labels"] = [list(v.items()) if v else None for v in cols["labels"]]
    np_type, pa_type = (np.float16, pa.float16()) if dtype == "float16" else (np.float32, pa.float32())
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np_type).reshape(-1), type=pa_type)
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = pa.table(cols, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as fh:  # on disk before the rename: a power cut cannot leave a torn shard
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    size = path.stat().st_size
    record = {"shard": path.name, "rows": table.num_rows, "bytes": size, "vector_id": vector_id,
              "checksum": file_checksum(path)}
    with open(path.parent / LEDGER, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    return size


def file_checksum(path: Path) -> str:
    """xxh3-128 of a file's bytes (memory speed: ~1 s per GB), for `cxrtool validate`'s deep check."""
    h = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return "xxh3-128:" + h.hexdigest()


def read_ledger(directory: Path) -> dict[str, dict]:
    """Shard name -> the writer's last record of it (a line cut short by a kill is ignored; a
    shard written just before a kill may have no record yet: it is verified without one)."""
    path = directory / LEDGER
    records: dict[str, dict] = {}
    if not path.is_file():
        return records
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
            records[str(row["shard"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return records


def _shard_number(name: str) -> int:
    try:
        return int(name.split("-")[1].split(".")[0])
    except (IndexError, ValueError):
        return -1


def next_shard_path(directory: Path) -> Path:
    """The next free ``shard-NNNNN.parquet`` in ``directory`` (numbering continues on resume, and
    never reuses the number of a shard that was quarantined: the ledger remembers it)."""
    names = [p.name for p in shard_paths(directory, recursive=False)] + list(read_ledger(directory))
    number = max((_shard_number(n) for n in names), default=-1) + 1
    return directory / f"shard-{number:05d}.parquet"


def shard_paths(directory: Path, recursive: bool = True) -> list[Path]:
    """Shard files under ``directory`` (verified or not: see :func:`scan_shards`); recursive by
    default, so the parts written by partitioned runs (``part-IIII-of-NNNN/``) are read as one
    collection."""
    if not directory.is_dir():
        return []
    return sorted(directory.rglob("shard-*.parquet") if recursive else directory.glob("shard-*.parquet"))


@dataclass(frozen=True)
class BadShard:
    path: Path
    reason: str


@dataclass
class ShardScan:
    """The verified shards of a folder, and those that did not verify (with why)."""

    good: list[Path] = field(default_factory=list)
    bad: list[BadShard] = field(default_factory=list)
    vector_id: str = ""  # the collection's vector id (what the good shards record)

    def state(self, directory: Path) -> dict[str, int]:
        """Verified shard file (relative to ``directory``) -> size in bytes: what an index records it holds."""
        return {p.relative_to(directory).as_posix(): p.stat().st_size for p in self.good}


def _check(path: Path, record: dict | None, kind: str) -> tuple[str, str]:
    """(reason it does not verify or "", its vector id), from the footer and the writer's record."""
    size = path.stat().st_size
    if record is not None and record.get("bytes") not in (None, size):
        cut = "cut short" if size < record["bytes"] else "changed"
        return f"{cut}: {size} bytes, the writer wrote {record['bytes']}", ""
    try:
        parquet = pq.ParquetFile(path)
        meta, names = parquet.metadata, set(parquet.schema_arrow.names)
    except (OSError, pa.ArrowException) as exc:
        return f"not a readable Parquet file ({str(exc).splitlines()[0][:120]})", ""
    kv = meta.metadata or {}
    version = kv.get(b"cxrtool", b"").decode(errors="replace")
    wanted = (REPORT_SHARD_SCHEMA_VERSION,) if kind == "report" else READABLE_VERSIONS
    if not version:
        return "not a cxrtool shard (no cxrtool metadata: a foreign Parquet file)", ""
    if version not in wanted:
        return f"a {version} shard where {wanted[-1]} shards belong", ""
    if not {"id", "embedding"} <= names:
        return "no id or embedding column", ""
    if record is not None and record.get("rows") not in (None, meta.num_rows):
        return f"holds {meta.num_rows} rows, the writer recorded {record['rows']}", ""
    return "", kv.get(b"model_fingerprint", b"").decode(errors="replace")


def scan_shards(directory: Path, vector_id: str | None = None, kind: str = "image",
                recursive: bool = True) -> ShardScan:
    """Verify every shard under ``directory``: the Parquet footer reads, the cxrtool schema and
    metadata are there, the row count and size match the writer's ledger, and the vector id is
    ``vector_id`` (None: the id most shards record, so one stray from another model stands out).
    Cheap (footers only): index, search and embed call it before they read anything."""
    scan = ShardScan()
    ledgers: dict[Path, dict[str, dict]] = {}
    checked: list[tuple[Path, str]] = []
    for path in shard_paths(directory, recursive):
        if path.parent not in ledgers:
            ledgers[path.parent] = read_ledger(path.parent)
        try:
            reason, got = _check(path, ledgers[path.parent].get(path.name), kind)
        except OSError as exc:
            reason, got = f"unreadable ({exc.strerror or exc})", ""
        if reason:
            scan.bad.append(BadShard(path, reason))
        else:
            checked.append((path, got))
    if vector_id is None:
        counts = Counter(got for _, got in checked)
        vector_id = counts.most_common(1)[0][0] if counts else ""
    scan.vector_id = vector_id
    for path, got in checked:
        if got == vector_id:
            scan.good.append(path)
        else:
            scan.bad.append(BadShard(path, f"embedded with another model ({got or 'unknown'}; "
                                           f"this collection's is {vector_id or 'unknown'})"))
    return scan


def shard_state(directory: Path, vector_id: str | None = None, kind: str = "image") -> dict[str, int]:
    """Verified shard file (relative to ``directory``) -> size in bytes: what an index records it holds."""
    return scan_shards(directory, vector_id, kind).state(directory)


def read_shard(path: Path, columns: list[str] | None = None, vectors: bool = True
               ) -> tuple[pa.Table, np.ndarray | None, str]:
    """One shard as (its ``columns``, default all, without the embedding; float32 vectors [N, D], or
    None with ``vectors=False``; the vector id it records). Every shard read goes through
    here: index, search, classify, evaluation and validate. A shard whose data cannot be read
    (its footer verified, a page did not) raises :class:`UnreadableShardError`."""
    wanted = [*columns, "embedding"] if columns is not None and vectors else columns
    try:
        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in wanted if c in present] if wanted is not None else None)
    except (OSError, pa.ArrowException) as exc:
        raise UnreadableShardError(path, str(exc).splitlines()[0][:160]) from None
    for name in (c for c in (wanted or []) if c not in present):  # a column added in a later format: null
        field_ = shard_schema(1, "").field(name) if name in META_COLUMNS else pa.field(name, pa.string())
        table = table.append_column(field_, pa.nulls(table.num_rows, field_.type))
    vector_id = (table.schema.metadata or {}).get(b"model_fingerprint", b"").decode()
    if not vectors:
        return table, None, vector_id
    emb = table.column("embedding").combine_chunks()
    vecs = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, emb.type.list_size)
    return table.drop_columns(["embedding"]), vecs, vector_id


class UnreadableShardError(WorkspaceError):
    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: unreadable shard ({reason})",
                         "run `cxrtool embed` again: it moves unreadable shards aside and embeds their files anew")
        self.path = path
        self.short_reason = f"unreadable data ({reason})"


def read_shard_metadata(directory: Path, columns: list[str] | None = None, recursive: bool = True,
                        kind: str = "image", scan: ShardScan | None = None) -> pa.Table:
    """The verified shards' metadata columns (no vectors) as one table (``scan``: already verified)."""
    paths = (scan or scan_shards(directory, kind=kind, recursive=recursive)).good
    schema = report_shard_schema(1, "") if kind == "report" else shard_schema(1, "")
    cols = columns or (REPORT_META_COLUMNS if kind == "report" else META_COLUMNS)
    if not paths:
        return pa.table({c: pa.array([], type=schema.field(c).type) for c in cols})
    return pa.concat_tables([read_shard(p, cols, vectors=False)[0] for p in paths])


def read_shard_vectors(directory: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids int64[N], vectors float32[N, D], vector_id) over the verified shards."""
    ids, vecs, vector_id = [], [], ""
    for p in scan_shards(directory).good:
        table, shard_vecs, vector_id = read_shard(p, ["id"])
        ids.append(table.column("id").to_numpy())
        vecs.append(shard_vecs)
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), ""
    return np.concatenate(ids), np.concatenate(vecs), vector_id  # read_shard gives float32


def read_collection(shards: Path, names: list[str], vector_id: str | None = None, progress: bool = False,
                    unreadable: list[BadShard] | None = None) -> tuple[pa.Table, np.ndarray, str]:
    """(metadata rows, float32 vectors, vector id) of the named (verified) shards under ``shards``;
    refuses shards embedded with different models (their vectors live in different spaces). With
    ``unreadable`` (a list), a shard whose data cannot be read is added to it and left out."""
    from tqdm import tqdm

    tables, vectors = [], []
    for name in tqdm(names, desc="index: reading shards", unit="shard", disable=not progress or len(names) < 8):
        try:
            table, vecs, got = read_shard(shards / name)
        except UnreadableShardError as exc:
            if unreadable is None:
                raise
            unreadable.append(BadShard(shards / name, exc.short_reason))
            continue
        if vector_id is None:
            vector_id = got
        elif got != vector_id:
            raise WorkspaceError(
                f"{shards / name} was embedded with another model ({got or 'unknown'}) than the rest "
                f"({vector_id or 'unknown'}); vectors of two models cannot share one index",
                "embed each model into its own --workspace, or re-embed with --overwrite")
        vectors.append(vecs)
        tables.append(table.replace_schema_metadata(None))
    if not tables:
        return pa.table({"id": pa.array([], pa.int64())}), np.zeros((0, 0), np.float32), vector_id or ""
    return pa.concat_tables(tables, promote_options="default"), np.concatenate(vectors), vector_id or ""
