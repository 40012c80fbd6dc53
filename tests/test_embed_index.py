"""Embedding shards, resume, errors, privacy; FAISS index and search (tiny model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

from cxrtool.embed import embed_archive, read_shard_metadata, read_shard_vectors
from cxrtool.embed.shards import shard_paths
from cxrtool.errors import WorkspaceError
from cxrtool.index import build_index, search
from cxrtool.model import load_model_dir
from cxrtool.workspace import Workspace

from .conftest import ARCHIVE
from .serve_helpers import phi_strings


@pytest.fixture()
def small_archive(tmp_path):
    """A mixed archive: DICOMs with and without extension, JPEGs, a PNG, an SR, a corrupt file."""
    root = tmp_path / "archive"
    for rel in ["pacs/PAT0001", "pacs/PAT0002", "pacs/PAT0004/STUDY0001/SERIES07", "hannover/case01"]:
        shutil.copytree(ARCHIVE / rel, root / rel)
    for jpg in sorted((ARCHIVE / "nih").rglob("*.jpg"))[:5]:
        dst = root / "nih" / jpg.relative_to(ARCHIVE / "nih")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(jpg, dst)
    bad = root / "pacs" / "PAT0009" / "IM000001"
    bad.parent.mkdir(parents=True)
    data = (ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001").read_bytes()
    bad.write_bytes(data[:4000])  # a truncated DICOM: header ok, pixels cut
    return root


def test_embed_writes_shards_with_ids_and_logs_bad_files(small_archive, tmp_path, tiny_model):
    ws = tmp_path / "ws"
    s = embed_archive(small_archive, ws, tiny_model, batch_size=4, workers=0, progress=False)
    assert s.found == 11 and s.embedded == 9 and s.not_images == 1 and s.failed == 1
    assert s.failures[0]["path"] == "pacs/PAT0009/IM000001"
    errors = [json.loads(x) for x in (ws / "errors.jsonl").read_text().splitlines()]
    assert {e["kind"] for e in errors} == {"error", "not_image"}
    assert {e["path"]: e["stage"] for e in errors} == {"pacs/PAT0009/IM000001": "decode",
                                                        "pacs/PAT0002/STUDY0001/SERIES99/SR000001": "header"}
    meta = read_shard_metadata(Workspace(ws).shards)
    assert len(set(meta.column("id").to_pylist())) == 9
    row = next(r for r in meta.to_pylist() if r["path"] == "pacs/PAT0001/STUDY0001/SERIES01/IM000001")
    assert row["modality"] == "CR" and row["view"] == "PA" and row["sop_uid"] and row["study_key"]
    ids, vecs, fp = read_shard_vectors(Workspace(ws).shards)
    assert vecs.shape == (9, 32) and fp == tiny_model.card.vector_id
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_outputs_carry_no_patient_identifiers(small_archive, tmp_path, tiny_model):
    phi = phi_strings(small_archive)
    assert phi, "the sample DICOMs carry names/IDs/birth dates: the test needs them"
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, batch_size=4, workers=0, progress=False)
    build_index(ws)
    for f in ws.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            for value in phi:
                assert value.encode() not in blob, f"{value!r} leaked into {f}"


def test_killed_run_resumes_without_duplicates_or_gaps(small_archive, tmp_path, tiny_model):
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, batch_size=2, workers=0, shard_rows=2, progress=False)
    shards = shard_paths(Workspace(ws).shards)
    full = set(read_shard_metadata(Workspace(ws).shards, ["path"]).column("path").to_pylist())
    # Simulate a kill: the last two shards never got written, a temp file was left behind.
    for p in shards[-2:]:
        p.unlink()
    (Workspace(ws).shards / ".shard-00099.parquet.tmp").write_bytes(b"partial")
    again = embed_archive(small_archive, ws, tiny_model, batch_size=2, workers=0, shard_rows=2, progress=False)
    assert again.embedded > 0 and again.failed == 0  # failures from run 1 are not retried
    paths = read_shard_metadata(Workspace(ws).shards, ["path"]).column("path").to_pylist()
    assert len(paths) == len(set(paths)) and set(paths) == full
    third = embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    assert third.embedded == 0 and third.already_done == third.found


def test_workspace_refuses_another_model(small_archive, tmp_path, tiny_model, tiny_text_dir):
    from cxrtool.model import create_model

    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    other = create_model("mobilenetv3_small_050", str(tiny_text_dir), embed_dim=32, input_size=64)
    other.card.fingerprint = "sha256:other"
    with pytest.raises(WorkspaceError, match="another model"):
        embed_archive(small_archive, ws, other, workers=0, progress=False)
    build_index(ws, model=tiny_model)
    with pytest.raises(WorkspaceError, match="another model"):
        search("effusion", workspace=ws, model=other)


def test_search_returns_shard_rows_by_id(small_archive, tmp_path, tiny_model_dir):
    model = load_model_dir(tiny_model_dir)
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, model, workers=0, progress=False)
    info = build_index(ws)
    assert info.kind == "flat" and info.count == 9
    query = small_archive / "hannover" / "case01"
    image = next(query.iterdir())
    hits = search(image=image, k=3, workspace=ws, model=model)
    assert hits[0].path == f"hannover/case01/{image.name}" and hits[0].score > 0.999
    text_hits = search("pleural effusion", k=20, workspace=ws, model=model, dedupe=None)
    assert len(text_hits) == 9 and [h.rank for h in text_hits] == list(range(1, 10))
    assert all(text_hits[i].score >= text_hits[i + 1].score for i in range(8))


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfpq"])
def test_approximate_indexes_keep_ids(tmp_path, kind):
    """Synthetic shards (the real writer) large enough to train IVF; ids survive every index type."""
    from cxrtool.embed.shards import write_shard

    ws = Workspace(tmp_path / "ws")
    ws.shards.mkdir(parents=True)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(2000, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [{"id": 10_000 + i, "path": f"img{i}.png", "rows": 1, "columns": 1} for i in range(2000)]
    write_shard(ws.shards / "shard-00000.parquet", rows, vecs, "sha256:x")
    build_index(ws.root, kind)
    from cxrtool.index.open import load_index

    index, info, _ = load_index(ws.root)
    assert info.kind == kind
    _, ids = index.search(vecs[:5], 1)
    hit = (ids[:, 0] == np.arange(10_000, 10_005)).mean()
    assert hit >= 0.8 if kind == "ivfpq" else hit == 1.0


def test_index_is_rebuilt_when_shards_change(small_archive, tmp_path, tiny_model):
    from cxrtool.index.info import index_is_current

    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, shard_rows=4, progress=False)
    build_index(ws)
    assert index_is_current(Workspace(ws))
    shard_paths(Workspace(ws).shards)[-1].unlink()
    assert not index_is_current(Workspace(ws))


def test_shards_are_plain_parquet(small_archive, tmp_path, tiny_model):
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    table = pq.read_table(shard_paths(Workspace(ws).shards)[0])
    assert table.schema.field("embedding").type.list_size == 32
    assert table.schema.metadata[b"cxrtool"] == b"cxrtool-shard/2"


def test_bad_inputs_each_get_one_error_row_and_the_run_goes_on(tmp_path, tiny_model):
    root = tmp_path / "bad"
    root.mkdir()
    good = ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001"
    shutil.copy(good, root / "good.dcm")
    data = good.read_bytes()
    (root / "truncated.dcm").write_bytes(data[: len(data) // 2])
    (root / "not_dicom.dcm").write_text("this is a text file with a .dcm name")
    (root / "empty.dcm").write_bytes(b"")
    shutil.copy(ARCHIVE / "pacs/PAT0002/STUDY0001/SERIES99/SR000001", root / "report_sr")
    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder for it
    ds.save_as(root / "mpeg2.dcm")
    locked = root / "locked.png"
    shutil.copy(next((ARCHIVE / "hannover").rglob("*.png")), locked)
    os.chmod(locked, 0)
    # Files that cannot be opened whatever the user's rights (root reads a chmod 000 file): a link
    # to nowhere with an image suffix fails reading its bytes; without a suffix it fails discovery.
    (root / "gone.png").symlink_to(root / "nowhere.png")
    (root / "IM_gone").symlink_to(root / "nowhere")
    s = embed_archive(root, tmp_path / "ws", tiny_model, workers=0, progress=False)
    lines = (tmp_path / "ws" / "errors.jsonl").read_text().splitlines()
    errors = {json.loads(x)["path"]: json.loads(x) for x in lines}
    assert len(lines) == len(errors)  # one row per file
    stages = {"truncated.dcm": "decode", "not_dicom.dcm": "header", "empty.dcm": "header", "report_sr": "header",
              "mpeg2.dcm": "decode", "gone.png": "read", "IM_gone": "discover"}
    assert {p: errors[p]["stage"] for p in stages} == stages
    assert errors["report_sr"]["kind"] == "not_image"
    assert all(errors[p]["reason"] and "\n" not in errors[p]["reason"] for p in errors)
    assert "transfer syntax" in errors["mpeg2.dcm"]["reason"]
    assert "No such file" in errors["gone.png"]["reason"] and str(root) not in errors["gone.png"]["reason"]
    if os.geteuid() == 0:  # root reads anything: the locked file embeds
        assert s.embedded == 2
    else:
        assert errors["locked.png"]["stage"] == "read" and s.embedded == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file, so there is nothing unreadable to test")
def test_unreadable_file_without_extension_is_a_discover_error(tmp_path, tiny_model):
    root = tmp_path / "locked"
    root.mkdir()
    shutil.copy(ARCHIVE / "pacs/PAT0001/STUDY0001/SERIES01/IM000001", root / "IM000001")
    os.chmod(root / "IM000001", 0)
    s = embed_archive(root, tmp_path / "ws", tiny_model, workers=0, progress=False)
    (row,) = [json.loads(x) for x in (tmp_path / "ws" / "errors.jsonl").read_text().splitlines()]
    assert s.failed == 1 and row["path"] == "IM000001" and row["stage"] == "discover"
    assert "Permission denied" in row["reason"]


def test_header_filters_and_duplicate_instances_are_skipped_with_reasons(tmp_path, tiny_model):
    root = tmp_path / "mixed"
    root.mkdir()
    chest = ARCHIVE / "pacs/PAT0001/STUDY0001/SERIES01/IM000001"
    shutil.copy(chest, root / "chest1")
    shutil.copy(chest, root / "chest1_again")  # the same SOP instance exported twice
    ds = pydicom.dcmread(chest)
    ds.Modality = "CT"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(root / "ct_slice")
    shutil.copy(ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001", root / "tibia")
    from cxrtool.io.classify import HeaderFilter

    s = embed_archive(root, tmp_path / "ws", tiny_model, workers=0, progress=False,
                      header_filter=HeaderFilter(body_parts=("CHEST",)))
    assert s.embedded == 1
    assert s.skipped == {"duplicate SOPInstanceUID": 1, "modality CT not in CR,DX": 1,
                         "body part EXTREMITY not in CHEST": 1}
    again = embed_archive(root, tmp_path / "ws", tiny_model, workers=0, progress=False,
                          header_filter=HeaderFilter(body_parts=("CHEST",)))
    assert again.embedded == 0 and again.already_done == 4


def test_a_chest_filter_keeps_every_chest_spelling_and_the_summary_counts_other_body_parts(tmp_path, tiny_model):
    """Real mixed exports hold hips and hands beside chests; a chest filter must not lose a site's own
    spelling of the chest, and without one the summary says how many other body parts were embedded."""
    from cxrtool.io.classify import HeaderFilter

    root = tmp_path / "mixed"
    root.mkdir()
    chest = ARCHIVE / "pacs/PAT0001/STUDY0001/SERIES01/IM000001"
    for i, part in enumerate(["CHEST", "THORAX", "PORTABLE CHEST", "TORAX", "", "HIP"]):
        ds = pydicom.dcmread(chest)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        if part:
            ds.BodyPartExamined = part
        else:
            del ds.BodyPartExamined
        ds.save_as(root / f"im{i}")
    shutil.copy(ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001", root / "tibia")  # a real EXTREMITY CR
    s = embed_archive(root, tmp_path / "chest", tiny_model, workers=0, progress=False,
                      header_filter=HeaderFilter(body_parts=("CHEST",)))
    assert s.embedded == 5 and s.skipped == {"body part HIP not in CHEST": 1, "body part EXTREMITY not in CHEST": 1}
    assert s.other_body_parts == {}
    every = embed_archive(root, tmp_path / "any", tiny_model, workers=0, progress=False)
    assert every.embedded == 7 and every.other_body_parts == {"HIP": 1, "EXTREMITY": 1}


def test_embed_summary_recommends_the_chest_filter_on_a_mixed_export(tmp_path, tiny_model_dir):
    from .test_integrity import cli

    root = tmp_path / "archive"
    shutil.copytree(ARCHIVE / "pacs", root)
    proc = cli("embed", str(root), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_model_dir))
    assert proc.returncode == 0, proc.stderr
    note = [line for line in proc.stdout.splitlines() if "note:" in line]
    assert len(note) == 1 and "EXTREMITY 7" in note[0] and "HIP 2" in note[0] and "--body-part CHEST" in note[0]
    help_text = cli("embed", "--help", env={"COLUMNS": "200"}).stdout
    assert "PORTABLE CHEST" in help_text and "hips, hands" in help_text


def test_identity_only_as_keyed_hashes_with_the_given_or_installation_key(small_archive, tmp_path, tiny_model):
    from cxrtool.embed.shards import content_hash
    from cxrtool.privacy import pseudonym

    phi = phi_strings(small_archive)
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False, pseudonym_key="s3cret-test-key",
                  float16=True)
    meta = read_shard_metadata(Workspace(ws).shards).to_pylist()
    chest = next(r for r in meta if r["path"] == "pacs/PAT0001/STUDY0001/SERIES01/IM000001")
    ds = pydicom.dcmread(small_archive / chest["path"], stop_before_pixels=True)
    assert chest["patient_key"] == pseudonym(str(ds.PatientID), "s3cret-test-key")
    assert chest["study_date"] is None
    assert chest["content_hash"] == content_hash((small_archive / chest["path"]).read_bytes())
    assert chest["content_hash"].startswith("xxh3-128:") and len(chest["content_hash"]) == len("xxh3-128:") + 32
    # rasters: a patient key only where the layout names the patient (NIH file names), keyed the same way
    assert all(r["patient_key"] is None for r in meta if r["path"].endswith(".png"))
    nih = [r for r in meta if r["path"].startswith("nih/")]
    assert nih and all(r["patient_key"] == pseudonym(r["path"].split("/")[1], "s3cret-test-key") for r in nih)
    for f in ws.rglob("*"):
        if f.is_file():
            for value in phi:
                assert value.encode() not in f.read_bytes()
    ids, vecs, _ = read_shard_vectors(Workspace(ws).shards)
    assert vecs.dtype == np.float32 and np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-2)
    plain = embed_archive(small_archive, tmp_path / "ws2", tiny_model, workers=0, progress=False)
    assert plain.embedded == 9
    # without a key: the installation's own secret, never none and never a public key
    from cxrtool.privacy import resolve_key

    rows = read_shard_metadata(Workspace(tmp_path / "ws2").shards).to_pylist()
    plain_chest = next(r for r in rows if r["path"] == chest["path"])
    assert plain_chest["patient_key"] == pseudonym(str(ds.PatientID), resolve_key(None)) != chest["patient_key"]


def test_partitioned_runs_cover_the_archive_exactly_once(small_archive, tmp_path, tiny_model):
    from cxrtool.embed.validate import validate_workspace

    ws = tmp_path / "ws"
    parts = [embed_archive(small_archive, ws, tiny_model, workers=0, progress=False, num_parts=3, part_index=i)
             for i in range(3)]
    assert sum(p.found for p in parts) == 11 and sum(p.embedded for p in parts) == 9
    report = validate_workspace(small_archive, ws)
    assert report.ok and report.files == 11 and report.embedded == 9 and report.listed_in_errors == 2
    assert build_index(ws).count == 9  # the index reads every part
    again = embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)  # unpartitioned rerun
    assert again.embedded == 0 and again.already_done == 11


def test_validate_reports_missing_and_duplicated_rows(small_archive, tmp_path, tiny_model):
    from cxrtool.embed.validate import validate_workspace

    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False, shard_rows=4)
    shards = shard_paths(Workspace(ws).shards)
    shutil.copy(shards[0], shards[0].with_name("shard-00099.parquet"))  # rows twice
    shards[-1].unlink()  # rows lost
    report = validate_workspace(small_archive, ws)
    assert not report.ok and report.duplicates and report.missing


def test_an_errors_line_cut_short_by_a_kill_is_ignored_on_resume(small_archive, tmp_path, tiny_model):
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    errors = ws / "errors.jsonl"
    errors.write_text(errors.read_text() + '{"path": "pacs/PAT0009/IM0')
    again = embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    assert again.embedded == 0 and again.already_done == 11


def test_report_bank_search_from_an_image(small_archive, tmp_path, tiny_model):
    from cxrtool.data import Study, StudyImage, write_manifest
    from cxrtool.embed.reports import embed_reports

    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    studies = [Study(f"s{i}", f"p{i}", "test", "t", [StudyImage("x.png")], impression=text, text=text)
               for i, text in enumerate(["Large left pleural effusion.", "No acute disease.", "Cardiomegaly.", ""])]
    write_manifest(studies, tmp_path / "bank.parquet")
    s = embed_reports(tmp_path / "bank.parquet", ws, tiny_model, text_field="impression", progress=False)
    assert s.embedded == 3 and s.empty == 1
    assert embed_reports(tmp_path / "bank.parquet", ws, tiny_model, text_field="impression",
                         progress=False).already_done == 3
    image = next((small_archive / "hannover").rglob("*.png"))
    with pytest.raises(WorkspaceError, match="no index"):  # search never builds: it says what to run
        search(image=image, k=5, workspace=ws, model=tiny_model, target="reports")
    build_index(ws, target="reports", model=tiny_model)
    hits = search(image=image, k=5, workspace=ws, model=tiny_model, target="reports")
    assert len(hits) == 3 and {h.text for h in hits} == {"Large left pleural effusion.", "No acute disease.",
                                                          "Cardiomegaly."}
    # A report's own text, searched as typed, finds that report whatever the (random) weights: cosine 1.
    # (Expanded with the prompt bank it would rank by the bank's sentences, which a random model
    # scores arbitrarily: this assertion failed on CI by luck of an unseeded text encoder.)
    exact = search("Cardiomegaly.", k=1, workspace=ws, model=tiny_model, target="reports", expand=False)
    assert exact[0].text == "Cardiomegaly."


def _dicom_media(root: Path) -> list[str]:
    """A DICOM medium written by pydicom's FileSet (DICOMDIR + PT*/ST*/SE*/IM* files without
    extension) from sample DICOMs; returns the referenced paths, relative to ``root``."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    for rel in ["pacs/PAT0001/STUDY0001/SERIES01/IM000001", "pacs/PAT0002/STUDY0001/SERIES01/IM000001.dcm"]:
        ds = pydicom.dcmread(ARCHIVE / rel)
        for name, value in (("StudyID", "1"), ("StudyDate", "20000101"), ("StudyTime", "000000"),
                            ("SeriesNumber", 1), ("InstanceNumber", 1)):  # what a STUDY/SERIES record needs
            if not ds.get(name):
                setattr(ds, name, value)
        fs.add(ds)
    root.mkdir(parents=True)
    fs.write(root)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("IM*") if p.is_file())


def test_dicomdir_is_not_an_image_and_its_references_are_embedded(tmp_path, tiny_model):
    from cxrtool.embed.validate import validate_workspace
    from cxrtool.io.discover import discover_archive

    root = tmp_path / "media"
    referenced = _dicom_media(root)
    assert len(referenced) == 2 and all("." not in Path(r).name for r in referenced)
    (root / "extra").mkdir()
    shutil.copy(ARCHIVE / "pacs/PAT0004/STUDY0001/SERIES07/IM000001", root / "extra" / "IM000009")  # not referenced
    shutil.copy(root / "DICOMDIR", root / "extra" / "index.dcm")  # a DICOMDIR under another name
    found = {f.rel: f.kind for f in discover_archive(root)}
    assert found == {**dict.fromkeys(referenced, "dicom"), "extra/IM000009": "dicom", "extra/index.dcm": "dicom"}
    ws = tmp_path / "ws"
    s = embed_archive(root, ws, tiny_model, workers=0, progress=False)
    assert s.embedded == 3 and s.failed == 0 and s.not_images == 0
    assert s.skipped == {"DICOMDIR (media directory)": 2}  # the DICOMDIR itself and its copy under another name
    assert set(read_shard_metadata(Workspace(ws).shards, ["path"]).column("path").to_pylist()) == {
        *referenced, "extra/IM000009"}
    assert validate_workspace(root, ws).ok


def test_file_referenced_by_dicomdir_but_missing_gets_one_error_row(tmp_path, tiny_model):
    from cxrtool.embed.validate import validate_workspace

    root = tmp_path / "media"
    referenced = _dicom_media(root)
    (root / referenced[0]).unlink()
    ws = tmp_path / "ws"
    s = embed_archive(root, ws, tiny_model, workers=0, progress=False)
    assert s.embedded == 1 and s.failed == 1
    rows = [json.loads(x) for x in (ws / "errors.jsonl").read_text().splitlines()]
    assert rows == [{"path": "DICOMDIR", "kind": "skipped", "stage": "discover",
                     "reason": "DICOMDIR (media directory)"},
                    {"path": referenced[0], "kind": "error", "stage": "discover",
                     "reason": "referenced by DICOMDIR but missing"}]
    assert validate_workspace(root, ws).ok
    assert embed_archive(root, ws, tiny_model, workers=0, progress=False).already_done == 3  # not retried


def test_each_run_appends_its_stage_times_to_the_run_log(small_archive, tmp_path, tiny_model):
    from cxrtool import __version__
    from cxrtool.embed.pipeline import read_errors

    ws = tmp_path / "ws"
    first = embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    runs = [json.loads(x) for x in (ws / "embed-runs.jsonl").read_text().splitlines()]
    assert [r["embedded"] for r in runs] == [9, 0] and [r["already_done"] for r in runs] == [0, 11]
    assert runs[0]["model_fingerprint"] == tiny_model.card.vector_id and runs[0]["cxrtool_version"] == __version__
    assert runs[0]["finished_at"] and "failures" not in runs[0]
    for name in ("discover_seconds", "wait_seconds", "model_seconds", "write_seconds"):
        assert 0 <= runs[0][name] <= runs[0]["seconds"]
    assert first.discover_seconds > 0
    assert {(r["path"], r["stage"]) for r in read_errors(ws)} == {
        ("pacs/PAT0009/IM000001", "decode"), ("pacs/PAT0002/STUDY0001/SERIES99/SR000001", "header")}


def test_flip_pair_model_embeds_searches_and_is_kept_apart_from_its_single_twin(small_archive, tmp_path,
                                                                                tiny_model_dir):
    single = load_model_dir(tiny_model_dir)
    d = tmp_path / "flip_pair"
    shutil.copytree(tiny_model_dir, d)
    card = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**card, "embedding": "flip_pair"}))
    paired = load_model_dir(d)
    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, paired, workers=0, progress=False)
    ids, vectors, vector_id = read_shard_vectors(ws / "shards")
    assert vectors.shape[1] == 64 and vector_id == paired.card.vector_id
    build_index(ws)
    hits = search("left pleural effusion", k=3, workspace=ws, model=paired, dedupe=None)
    assert len(hits) == 3 and all(hits[i].score >= hits[i + 1].score for i in range(2))
    with pytest.raises(WorkspaceError, match="same weights, but its vectors are 'flip_pair'"):
        search("left pleural effusion", workspace=ws, model=single)  # same weights, other vectors: refused
    with pytest.raises(WorkspaceError, match="another model"):
        embed_archive(small_archive, ws, single, workers=0, progress=False)


def test_failures_standing_from_an_earlier_run_are_counted_and_exit_1(small_archive, tmp_path, tiny_model_dir):
    from .test_cli import cli

    args = ["embed", str(small_archive), "--workspace", str(tmp_path / "ws"), "--model", str(tiny_model_dir)]
    first = cli(*args, check=False)
    assert first.returncode == 1 and "1 failed" in first.stdout
    again = cli(*args, "--json", check=False)
    summary = json.loads(again.stdout)
    assert again.returncode == 1 and summary["failed"] == 0 and summary["failed_earlier"] == 1
    text = cli(*args, check=False).stdout
    assert "0 failed (+1 from earlier runs, not retried)" in text and "exit status 1" in text


def test_format_1_shards_still_read_with_null_labels(small_archive, tmp_path, tiny_model):
    """Shards written before the labels column (cxrtool-shard/1) verify and read, labels null."""
    import pyarrow as pa

    ws = tmp_path / "ws"
    embed_archive(small_archive, ws, tiny_model, workers=0, progress=False)
    for shard in sorted((ws / "shards").glob("shard-*.parquet")):
        table = pq.read_table(shard)
        meta = {**table.schema.metadata, b"cxrtool": b"cxrtool-shard/1"}
        old = table.drop_columns(["labels"]).replace_schema_metadata(meta)
        pq.write_table(old, shard)
        (ws / "shards" / "shards.jsonl").unlink(missing_ok=True)  # written before the ledger too
    rows = read_shard_metadata(Workspace(ws).shards)
    assert rows.num_rows == 9 and rows.column("labels").null_count == 9
    assert rows.schema.field("labels").type == pa.map_(pa.string(), pa.int8())
    assert embed_archive(small_archive, ws, tiny_model, workers=0, progress=False).embedded == 0
