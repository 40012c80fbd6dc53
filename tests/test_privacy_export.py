"""No pseudonym from a public key, one secret per installation shared by prepare and embed, and a
de-identified export in which nothing of the source survives (checked byte by byte, and in every
Parquet value decoded)."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard_metadata
from cxrtool.errors import CxrError
from cxrtool.index.search import Index
from cxrtool.privacy import pseudonym, resolve_key

from .conftest import ARCHIVE
from .test_integrity import cli


def test_without_a_key_an_installation_secret_is_made_once_and_kept_private(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CXRTOOL_CONFIG", str(tmp_path / "config"))
    monkeypatch.delenv("CXRTOOL_PSEUDONYM_KEY", raising=False)
    key = resolve_key(None)
    assert "created this installation's pseudonym key" in capsys.readouterr().err
    assert resolve_key(None) == key and capsys.readouterr().err == ""  # said once
    path = tmp_path / "config" / "pseudonym.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(key) >= 32 and pseudonym("PAT0001", key) != pseudonym("PAT0001", "cxrtool")
    path.chmod(0o644)
    with pytest.raises(CxrError, match="readable by other users"):
        resolve_key(None)


@pytest.mark.parametrize("key", ["cxrtool", "secret", "short"])
def test_public_or_guessable_keys_are_refused(key, monkeypatch):
    monkeypatch.delenv("CXRTOOL_PSEUDONYM_KEY", raising=False)
    with pytest.raises(CxrError, match="not a guessable word"):
        resolve_key(key)


def test_prepare_and_embed_share_the_installation_key(tmp_path, tiny_model):
    from cxrtool.data.sources.dicom_folder import read_dicom_folder_studies

    pacs = tmp_path / "pacs"
    shutil.copytree(ARCHIVE / "pacs", pacs)
    manifest_keys = {s.patient_key for s in read_dicom_folder_studies(pacs)}
    embed_archive(pacs, tmp_path / "ws", tiny_model, workers=0, progress=False)
    shard_keys = set(read_shard_metadata(tmp_path / "ws" / "shards", ["patient_key"]).column("patient_key").to_pylist())
    assert manifest_keys and manifest_keys == shard_keys - {None}
    raw = {str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for p in pacs.rglob("*.dcm")}
    assert not raw & shard_keys and all(k.startswith("pt-") for k in manifest_keys)


def _source_secrets(archive: Path, ws: Path) -> set[str]:
    """Everything of the source that must not reach an export: UIDs, dates, patient and accession
    ids and names (from the DICOM headers), path components, and the shards' own keyed values."""
    found: set[str] = set()
    for path in archive.rglob("*"):
        if path.is_file():
            rel = path.relative_to(archive)
            found |= {part for part in (*rel.parent.parts, rel.stem) if len(part) >= 5}
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM
                continue
            for field in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate", "PatientID",
                          "PatientName", "PatientBirthDate", "AccessionNumber", "SeriesDate", "ContentDate"):
                value = str(ds.get(field, "") or "")
                if len(value) >= 5:
                    found.add(value)
    meta = read_shard_metadata(ws / "shards")
    for column in ("path", "study_key", "series_uid", "sop_uid", "patient_key", "accession_key", "study_date",
                   "content_hash"):
        found |= {str(v) for v in meta.column(column).to_pylist() if v}
    found |= {str(i) for i in meta.column("id").to_pylist()}
    return found


def test_a_deidentified_export_keeps_nothing_of_the_source(tmp_path, tiny_model, tiny_model_dir):
    archive = tmp_path / "archive"
    for part in ("pacs", "hannover"):
        shutil.copytree(ARCHIVE / part, archive / part)
    ws = tmp_path / "ws"
    embed_archive(archive, ws, tiny_model, workers=0, keep_study_date=True, progress=False)
    out = tmp_path / "shared"
    proc = cli("export", "-o", str(out), "--deidentify", "--workspace", str(ws), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    source = read_shard_metadata(ws / "shards")
    assert summary["rows"] == source.num_rows > 0
    secrets = _source_secrets(archive, ws)
    assert len(secrets) > 50  # the check has something to find
    leaks = []
    for f in out.rglob("*"):
        if not f.is_file():
            continue
        blob = f.read_bytes()
        leaks += [(f.name, s) for s in secrets if s.encode() in blob]
        if f.suffix == ".parquet":
            text = json.dumps(pq.read_table(f).drop_columns(
                [c for c in ("embedding",) if c in pq.read_schema(f).names]).to_pylist(), default=str)
            leaks += [(f.name, s) for s in secrets if s in text]
    assert not leaks, leaks[:10]
    exported = read_shard_metadata(out / "shards")
    # one study's rows still share their (new) study key; dates and content hashes are gone
    assert len(exported.column("study_key").unique()) == len(source.column("study_key").unique())
    assert set(exported.column("study_date").to_pylist()) == {None}
    index = Index.open(out, model=tiny_model)
    hits = index.search(vector=index.store.vectors(np.array([0])), k=3, dedupe=None)
    assert len(hits) == 3 and hits[0].score > 0.999  # the stored vector finds itself (or an identical copy)


def test_export_refuses_without_deidentify_and_into_a_full_folder(tmp_path, tiny_model):
    assert cli("export", "-o", str(tmp_path / "x"), "--workspace", str(tmp_path)).returncode == 2
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    proc = cli("export", "-o", str(tmp_path / "full"), "--deidentify", "--workspace", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
