"""The study manifest: one Parquet row per study, the single input format of training.

Schema (native Arrow types, readable by pandas/DuckDB without cxrtool):

============  ===========================================  ===========================================
column        type                                         meaning
============  ===========================================  ===========================================
study_key     string                                       unique study id within the manifest
patient_key   string                                       pseudonymous patient id (splits by patient)
split         string                                       train | validate | test
source        string                                       dataset / adapter name
images        list<struct<path: string, view: string>>     image files (absolute or manifest-relative)
findings      string (nullable)                            report FINDINGS section
impression    string (nullable)                            report IMPRESSION section
report        string (nullable)                            full report text
labels        map<string, int8>                            1 positive, 0 negative, -1 uncertain;
                                                           an absent key means "not mentioned"
text          string                                       evaluation text: the report, or the
                                                           deterministic prompt text of the labels
sides         map<string, string>                          label -> the patient's side of the finding
                                                           (left | right | bilateral); absent = unknown
============  ===========================================  ===========================================

``sides`` came with format 2 (``study-manifest/2``); a format-1 manifest reads with no sides.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cxrtool.data.sides import SIDES
from cxrtool.errors import ManifestError

SPLITS = ("train", "validate", "test")
OPTIONAL_COLUMNS = ("sides",)  # added in format 2; older manifests lack them

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("study_key", pa.string(), nullable=False),
        pa.field("patient_key", pa.string()),
        pa.field("split", pa.string()),
        pa.field("source", pa.string()),
        pa.field("images", pa.list_(pa.struct([("path", pa.string()), ("view", pa.string())]))),
        pa.field("findings", pa.string()),
        pa.field("impression", pa.string()),
        pa.field("report", pa.string()),
        pa.field("labels", pa.map_(pa.string(), pa.int8())),
        pa.field("text", pa.string()),
        pa.field("sides", pa.map_(pa.string(), pa.string())),
    ],
    metadata={"cxrtool": "study-manifest/2"},
)


@dataclass
class StudyImage:
    path: str
    view: str = ""


@dataclass
class Study:
    study_key: str
    patient_key: str
    split: str
    source: str
    images: list[StudyImage]
    findings: str | None = None
    impression: str | None = None
    report: str | None = None
    labels: dict[str, int] = field(default_factory=dict)
    text: str = ""
    sides: dict[str, str] = field(default_factory=dict)  # label -> left | right | bilateral (data/laterality.py)


_LABEL_RANK = {1: 2, -1: 1, 0: 0}


def merge_label(old: int | None, new: int) -> int:
    """Two mentions of one label in a study: positive beats uncertain beats negative."""
    return new if old is None or _LABEL_RANK[new] > _LABEL_RANK[old] else old


def split_for_patient(patient_key: str, validate: float = 0.1, test: float = 0.0, salt: str = "cxrtool") -> str:
    """Deterministic patient-level split from a hash: the same patient always lands together."""
    u = int(hashlib.sha256(f"{salt}:{patient_key}".encode()).hexdigest()[:12], 16) / float(16**12)
    if u < test:
        return "test"
    if u < test + validate:
        return "validate"
    return "train"


def write_manifest(studies: list[Study], path: str | Path) -> Path:
    """Write studies to Parquet with :data:`MANIFEST_SCHEMA`; image paths are stored as given."""
    path = Path(path)
    keys = [s.study_key for s in studies]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ManifestError(f"duplicate study_key {dup!r} in manifest")
    bad = next(((s.study_key, k, v) for s in studies for k, v in s.sides.items() if v not in SIDES), None)
    if bad:
        raise ManifestError(f"study {bad[0]!r}: side {bad[2]!r} of {bad[1]!r} is not one of {', '.join(SIDES)}")
    cols = {
        "study_key": keys,
        "patient_key": [s.patient_key for s in studies],
        "split": [s.split for s in studies],
        "source": [s.source for s in studies],
        "images": [[{"path": i.path, "view": i.view} for i in s.images] for s in studies],
        "findings": [s.findings for s in studies],
        "impression": [s.impression for s in studies],
        "report": [s.report for s in studies],
        "labels": [list(s.labels.items()) for s in studies],
        "text": [s.text for s in studies],
        "sides": [list(s.sides.items()) for s in studies],
    }
    table = pa.table(cols, schema=MANIFEST_SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def read_manifest(path: str | Path, split: str | None = None) -> list[Study]:
    """Read a manifest; relative image paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found", "create one with `cxrtool prepare`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet file ({exc})") from None
    missing = [n for n in MANIFEST_SCHEMA.names if n not in table.column_names and n not in OPTIONAL_COLUMNS]
    if missing:
        raise ManifestError(f"{path}: not a cxrtool manifest (missing columns {missing})")
    base = path.parent
    out = []
    for row in table.to_pylist():
        if split and row["split"] != split:
            continue
        images = [StudyImage(str(base / i["path"]) if not Path(i["path"]).is_absolute() else i["path"],
                             i.get("view") or "") for i in row["images"]]
        out.append(Study(row["study_key"], row["patient_key"] or row["study_key"], row["split"] or "train",
                         row["source"] or "", images, row["findings"], row["impression"], row["report"],
                         dict(row["labels"] or []), row["text"] or "", dict(row.get("sides") or [])))
    return out
