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
patient_key     string               keyed hash of PatientID, only with a pseudonym key, else null
accession_key   string               keyed hash of AccessionNumber, same rule
study_date      string               YYYYMMDD, only with --keep-study-date, else null
embedding       fixed_size_list      L2-normalised image vector, float32 (or float16 by flag)
==============  ===================  ==========================================================

No patient names, birth dates, raw patient IDs or accession numbers are ever written (see
``cxrtool.io.dicom_header.SAFE_DICOM_FIELDS`` and ``cxrtool.privacy``). File metadata records the
model's vector id under ``model_fingerprint`` (the weights' fingerprint, plus ``+flip_pair`` for a
model that writes flip-paired vectors: ``ModelCard.vector_id``) and the embedding dtype.

Shards are written by :func:`write_shard` and read only by :func:`read_shard` (through
:func:`read_shard_metadata`, :func:`read_shard_vectors` and :func:`read_collection`), so index,
search, evaluation and ``cxrtool validate`` read them one way.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from cxrtool.errors import WorkspaceError

SHARD_SCHEMA_VERSION = "cxrtool-shard/1"
META_COLUMNS = ["id", "path", "study_key", "series_uid", "sop_uid", "view", "modality", "body_part",
                "file_format", "transfer_syntax", "rows", "columns", "content_hash", "patient_key", "accession_key",
                "study_date"]


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


def write_shard(path: Path, rows: list[dict], vectors: np.ndarray, vector_id: str, dtype: str = "float32",
                kind: str = "image") -> None:
    """Write one shard atomically (temp file + rename): a shard exists whole or not at all."""
    if kind == "report":
        schema, columns = report_shard_schema(vectors.shape[1], vector_id, dtype), REPORT_META_COLUMNS
    else:
        schema, columns = shard_schema(vectors.shape[1], vector_id, dtype), META_COLUMNS
    cols = {name: [r.get(name) for r in rows] for name in columns}
    np_type, pa_type = (np.float16, pa.float16()) if dtype == "float16" else (np.float32, pa.float32())
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np_type).reshape(-1), type=pa_type)
    cols["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    table = pa.table(cols, schema=schema)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def next_shard_path(directory: Path) -> Path:
    """The next free ``shard-NNNNN.parquet`` in ``directory`` (numbering continues on resume)."""
    existing = shard_paths(directory, recursive=False)
    number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
    return directory / f"shard-{number:05d}.parquet"


def shard_paths(directory: Path, recursive: bool = True) -> list[Path]:
    """Shard files under ``directory``; recursive by default, so the parts written by partitioned
    runs (``part-IIII-of-NNNN/``) are read as one collection."""
    if not directory.is_dir():
        return []
    return sorted(directory.rglob("shard-*.parquet") if recursive else directory.glob("shard-*.parquet"))


def shard_state(directory: Path) -> dict[str, int]:
    """Shard file (relative to ``directory``) -> size in bytes: what an index records it holds."""
    return {p.relative_to(directory).as_posix(): p.stat().st_size for p in shard_paths(directory)}


def read_shard(path: Path, columns: list[str] | None = None, vectors: bool = True
               ) -> tuple[pa.Table, np.ndarray | None, str]:
    """One shard as (its ``columns``, default all, without the embedding; float32 vectors [N, D], or
    None with ``vectors=False``; the vector id it records). Every shard read goes through
    here: index, search, classify, evaluation and validate."""
    wanted = [*columns, "embedding"] if columns is not None and vectors else columns
    table = pq.read_table(path, columns=wanted)
    vector_id = (table.schema.metadata or {}).get(b"model_fingerprint", b"").decode()
    if not vectors:
        return table, None, vector_id
    emb = table.column("embedding").combine_chunks()
    vecs = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, emb.type.list_size)
    return table.drop_columns(["embedding"]), vecs, vector_id


def read_shard_metadata(directory: Path, columns: list[str] | None = None, recursive: bool = True,
                        kind: str = "image") -> pa.Table:
    """All shards' metadata columns (no vectors) as one table."""
    paths = shard_paths(directory, recursive)
    schema = report_shard_schema(1, "") if kind == "report" else shard_schema(1, "")
    cols = columns or (REPORT_META_COLUMNS if kind == "report" else META_COLUMNS)
    if not paths:
        return pa.table({c: pa.array([], type=schema.field(c).type) for c in cols})
    return pa.concat_tables([read_shard(p, cols, vectors=False)[0] for p in paths])


def read_shard_vectors(directory: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids int64[N], vectors float32[N, D], vector_id) over all shards."""
    ids, vecs, vector_id = [], [], ""
    for p in shard_paths(directory):
        table, shard_vecs, vector_id = read_shard(p, ["id"])
        ids.append(table.column("id").to_numpy())
        vecs.append(shard_vecs)
    if not ids:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32), ""
    return np.concatenate(ids), np.concatenate(vecs), vector_id  # read_shard gives float32


def read_collection(shards: Path, names: list[str], vector_id: str | None = None, progress: bool = False
                    ) -> tuple[pa.Table, np.ndarray, str]:
    """(metadata rows, float32 vectors, vector id) of the named shards under ``shards``;
    refuses shards embedded with different models (their vectors live in different spaces)."""
    from tqdm import tqdm

    tables, vectors = [], []
    for name in tqdm(names, desc="index: reading shards", unit="shard", disable=not progress or len(names) < 8):
        table, vecs, got = read_shard(shards / name)
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
