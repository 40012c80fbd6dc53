"""Source adapters on small fixtures in the real published layouts, plus the section parser."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cxrtool.data import prepare_chexpert, prepare_nih, prepare_openi, read_manifest
from cxrtool.data.sections import parse_report
from cxrtool.data.sources.openi import read_openi_studies

from .conftest import REPO

SHARED = Path(os.environ.get("CXRTOOL_SHARED_DATA", REPO.parent / "shared" / "data"))

MIMIC_STYLE = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:
 No acute cardiopulmonary process.
"""


# ------------------------------------------------------------------------------- sections


def test_mimic_style_report_sections():
    r = parse_report(MIMIC_STYLE)
    assert r.findings.startswith("There is no focal consolidation") and "nipple shadows." in r.findings
    assert r.impression == "No acute cardiopulmonary process."
    assert r.other["indication"].startswith("F with new onset ascites")  # '___' removed
    assert "___" not in r.full and "FINAL REPORT" in r.full


def test_header_spellings_and_inline_headers():
    r = parse_report("Findings: Heart is enlarged. CONCLUSION: Cardiomegaly.")
    assert r.findings == "Heart is enlarged." and r.impression == "Cardiomegaly."
    r = parse_report("FINDINGS AND IMPRESSION: Small left effusion.")
    assert r.findings == "Small left effusion." and r.impression is None
    r = parse_report("IMPRESSIONS:\n1. Atelectasis.\n2. No effusion.")
    assert r.impression == "1. Atelectasis. 2. No effusion."


def test_missing_sections_and_deid_marks():
    r = parse_report("The XXXX are clear. No acute disease.")
    assert r.findings is None and r.impression is None
    assert r.other["preamble"] == "The are clear. No acute disease."
    assert parse_report("").main_text() is None


def test_main_text_is_the_longer_section_not_the_lexicographic_max():
    r = parse_report("FINDINGS: Zero change. IMPRESSION: A much longer impression than the findings.")
    assert r.main_text() == "A much longer impression than the findings."


# --------------------------------------------------------------------------------- OpenI


def _openi_xml(uid: str, findings: str, impression: str, mesh: list[str], images: list[str]) -> bytes:
    abstract = "".join(f'<AbstractText Label="{k}">{v}</AbstractText>' for k, v in
                       (("COMPARISON", "None."), ("INDICATION", "Cough"), ("FINDINGS", findings),
                        ("IMPRESSION", impression)))
    major = "".join(f"<major>{m}</major>" for m in mesh)
    imgs = "".join(f'<parentImage id="{i}"><caption>Xray Chest PA and Lateral</caption></parentImage>' for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="{uid}"/><MedlineCitation><Article>'
            f"<Abstract>{abstract}</Abstract></Article></MedlineCitation><MeSH>{major}</MeSH>{imgs}"
            "</eCitation>").encode()


@pytest.fixture()
def openi_tgz(tmp_path) -> Path:
    docs = {
        "1.xml": _openi_xml("CXR1", "Heart size normal. No XXXX effusion.", "Normal chest x-XXXX.", ["normal"],
                            ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]),
        "2.xml": _openi_xml("CXR2", "Enlarged heart. Small right effusion.", "Cardiomegaly.",
                            ["Cardiomegaly/mild", "Pleural Effusion/right/small"], ["CXR2_IM-0652-1001"]),
        "3.xml": _openi_xml("CXR3", "", "", ["No Indexing"], []),
    }
    path = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in docs.items():
            info = tarfile.TarInfo(f"ecgen-radiology/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_openi_reports_become_studies_with_sections_and_mesh_labels(openi_tgz, tmp_path):
    out = tmp_path / "openi.parquet"
    s = prepare_openi(openi_tgz, out)
    assert s.studies == 3 and s.images == 3
    studies = {x.study_key: x for x in read_manifest(out)}
    one, two, three = studies["openi-CXR1"], studies["openi-CXR2"], studies["openi-CXR3"]
    assert one.labels == {"No Finding": 1} and "XXXX" not in one.findings
    assert two.labels == {"Cardiomegaly": 1, "Pleural Effusion": 1}
    assert two.findings == "Enlarged heart. Small right effusion." and two.impression == "Cardiomegaly."
    assert two.text == two.findings  # the longer section
    assert three.images == [] and three.text == ""
    rejects = [json.loads(x) for x in Path(s.rejects_file).read_text().splitlines()]
    reasons = Counter(r["reason"].split(",")[0] for r in rejects)
    assert reasons["no linked images"] == 1 and reasons["empty report (no findings or impression)"] == 1
    assert s.missing_images == 3 and all(r["action"] == "kept" for r in rejects)


@pytest.mark.skipif(not (SHARED / "openi_reports" / "NLMCXR_reports.tgz").is_file(),
                    reason="needs the project's open-data folder")
def test_real_openi_archive_stats_match_an_independent_count(tmp_path):
    """3,955 studies; section and label counts recomputed here straight from the XML."""
    import re
    import xml.etree.ElementTree as ET

    src = SHARED / "openi_reports" / "NLMCXR_reports.tgz"
    s = prepare_openi(src, tmp_path / "o.parquet", check_files=False)
    findings = impression = images = cardiomegaly = normal = 0
    with tarfile.open(src) as tar:
        for m in tar.getmembers():
            if not m.name.endswith(".xml"):
                continue
            doc = ET.fromstring(tar.extractfile(m).read())
            labels = {(a.get("Label") or ""): (a.text or "").strip() for a in doc.iter("AbstractText")}
            findings += bool(re.sub(r"X{2,}", "", labels.get("FINDINGS", "")).strip())
            impression += bool(re.sub(r"X{2,}", "", labels.get("IMPRESSION", "")).strip())
            images += len(list(doc.iter("parentImage")))
            majors = [e.text.split("/")[0].strip() for e in doc.iter("major") if e.text]
            cardiomegaly += "Cardiomegaly" in majors or any(
                e.text.startswith("Cardiac Shadow/enlarged") for e in doc.iter("major") if e.text) or any(
                e.text.split("/")[0] == "Cardiomegaly" for e in doc.iter("minor") if e.text)
            normal += majors == ["normal"]
    assert s.studies == 3955 and s.images == images == 7470
    assert s.sections["findings"] == findings and s.sections["impression"] == impression
    assert s.label_counts["Cardiomegaly"]["positive"] == cardiomegaly
    assert s.label_counts["No Finding"]["positive"] == normal


# ----------------------------------------------------------------------------------- NIH


def test_nih_data_entry_with_official_split_and_missing_images(tmp_path):
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
            "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]",
            "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
            "00000001_001.png,Cardiomegaly|Effusion,1,1,58,M,AP,2894,2729,0.143,0.143",
            "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
            "00000003_000.png,Hernia,0,3,74,F,PA,2500,2048,0.168,0.168"]
    csv_path = tmp_path / "Data_Entry_2017_v2020.csv.gz"
    with gzip.open(csv_path, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    images = tmp_path / "images_001" / "images"
    images.mkdir(parents=True)
    (images / "00000001_000.png").write_bytes(b"png")
    s = prepare_nih(csv_path, tmp_path / "nih.parquet", image_root=tmp_path, split_dir=tmp_path)
    assert s.studies == 4 and s.missing_images == 3
    studies = {x.study_key: x for x in read_manifest(tmp_path / "nih.parquet")}
    assert studies["00000001_001"].labels["Pleural Effusion"] == 1 and studies["00000001_001"].labels["Edema"] == 0
    assert studies["00000001_001"].images[0].view == "AP"
    assert studies["00000002_000"].labels["No Finding"] == 1
    assert studies["00000002_000"].text == "the lungs are clear."
    assert studies["00000003_000"].split == "test"
    assert studies["00000001_000"].images[0].path == str(images / "00000001_000.png")


@pytest.mark.skipif(not (SHARED / "label_tables").is_dir(), reason="needs the project's open-data folder")
def test_real_nih_and_chexpert_tables_read_with_images_absent(tmp_path):
    nih = prepare_nih(SHARED / "label_tables" / "Data_Entry_2017_v2020.csv.gz", tmp_path / "n.parquet")
    assert nih.studies == 112_120 and nih.missing_images == 112_120 and nih.dropped_rows == 0
    chex = prepare_chexpert(SHARED / "label_tables" / "chexpert_train.csv.gz", tmp_path / "c.parquet")
    assert chex.images == 223_414 and chex.dropped_rows == 0
    assert chex.label_counts["Pleural Effusion"]["uncertain"] > 0


# ------------------------------------------------------------------------------ CheXpert


def test_chexpert_rows_group_into_studies_with_uncertain_labels(tmp_path):
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir()
    header = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,"
              "Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,"
              "Fracture,Support Devices")
    rows = [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
        "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,"
        "-1.0,,-1.0,,-1.0,,1.0,",
        "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg,Female,87,Lateral,,,,-1.0,1.0,,-1.0,"
        "-1.0,,-1.0,,-1.0,,1.0,",
        "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,maybe,,,,,,,,,,,",
    ]
    (folder / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    s = prepare_chexpert(folder / "train.csv", tmp_path / "c.parquet")
    assert s.studies == 2 and s.images == 3 and s.dropped_rows == 1  # the 'maybe' row
    studies = {x.study_key: x for x in read_manifest(tmp_path / "c.parquet")}
    two = studies["train/patient00002/study2"]
    assert [i.view for i in two.images] == ["AP", "LATERAL"]
    assert two.labels["Cardiomegaly"] == -1 and two.labels["Lung Opacity"] == 1 and "Pneumothorax" not in two.labels
    assert all(x.split == "train" for x in studies.values())
    assert pq.read_schema(tmp_path / "c.parquet").field("labels").type.item_type.bit_width == 8


def test_openi_folder_of_xml_is_accepted(openi_tgz, tmp_path):
    folder = tmp_path / "xml"
    with tarfile.open(openi_tgz) as tar:
        tar.extractall(folder, filter="data")
    assert len(read_openi_studies(folder)) == 3


# ---------------------------------------------------------------------------------- MIMIC


def test_mimic_layout_gives_studies_with_views_sections_labels_and_official_split(tmp_path):
    from cxrtool.data import prepare_mimic

    root = tmp_path / "mimic-cxr-jpg"
    root.mkdir()
    (root / "mimic-cxr-2.0.0-metadata.csv").write_text(
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns\n"
        "d1,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544\n"
        "d2,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544\n"
        "d3,10000764,57375967,CHEST (PORTABLE AP),AP,2539,3050\n")
    with gzip.open(root / "mimic-cxr-2.0.0-split.csv.gz", "wt") as fh:
        fh.write("dicom_id,study_id,subject_id,split\nd1,50414267,10000032,train\nd2,50414267,10000032,train\n"
                 "d3,57375967,10000764,test\n")
    (root / "mimic-cxr-2.0.0-chexpert.csv").write_text(
        "subject_id,study_id,Atelectasis,Cardiomegaly,Edema,No Finding,Pleural Effusion\n"
        "10000032,50414267,,,,1.0,\n10000764,57375967,-1.0,1.0,0.0,,1.0\n")
    report = root / "files" / "p10" / "p10000032" / "s50414267.txt"
    report.parent.mkdir(parents=True)
    report.write_text(MIMIC_STYLE)
    image = root / "files" / "p10" / "p10000032" / "s50414267" / "d1.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"jpg")
    s = prepare_mimic(root, tmp_path / "m.parquet")
    assert s.studies == 2 and s.images == 3 and s.missing_images == 2
    studies = {x.study_key: x for x in read_manifest(tmp_path / "m.parquet")}
    one, two = studies["s50414267"], studies["s57375967"]
    assert one.patient_key == "p10000032" and one.split == "train" and two.split == "test"
    assert [i.view for i in one.images] == ["PA", "LATERAL"] and one.images[0].path == str(image)
    assert one.impression == "No acute cardiopulmonary process." and one.text == one.findings
    assert two.labels == {"Atelectasis": -1, "Cardiomegaly": 1, "Edema": 0, "Pleural Effusion": 1}
    assert two.report is None and two.text  # no report file: flagged, text from labels
    reasons = [json.loads(x)["reason"] for x in Path(s.rejects_file).read_text().splitlines()]
    assert any(r.startswith("report not found") for r in reasons)


# --------------------------------------------------------------------------- DICOM folder


def test_dicom_folder_with_reports_keyed_by_study_uid(sample_archive, tmp_path):
    import pydicom

    from cxrtool.data import prepare_dicom_folder

    pacs = sample_archive / "pacs"
    chest = pacs / "PAT0001" / "STUDY0001" / "SERIES01" / "IM000001"
    ds = pydicom.dcmread(chest, stop_before_pixels=True)
    reports = tmp_path / "reports.csv"
    reports.write_text("StudyInstanceUID,report\n"
                       f"{ds.StudyInstanceUID},\"FINDINGS: Clear lungs. IMPRESSION: Normal.\"\n"
                       "1.2.3.4.999,\"IMPRESSION: orphan report\"\n")
    s = prepare_dicom_folder(pacs, tmp_path / "d.parquet", reports_csv=reports, pseudonym_key="a-test-secret-key")
    studies = {x.study_key: x for x in read_manifest(tmp_path / "d.parquet")}
    study = studies[str(ds.StudyInstanceUID)]
    assert study.findings == "Clear lungs." and study.impression == "Normal." and study.images[0].view == "PA"
    assert study.patient_key.startswith("pt-") and str(ds.PatientID) not in study.patient_key
    rejects = [json.loads(x) for x in Path(s.rejects_file).read_text().splitlines()]
    assert any("not an image" in r["reason"] and r["action"] == "dropped" for r in rejects)  # the SR
    assert any(r["reason"].startswith("report matches no study") for r in rejects)
    blob = (tmp_path / "d.parquet").read_bytes() + Path(s.rejects_file).read_bytes()
    assert str(ds.PatientID).encode() not in blob and b"1.2.3.4.999" not in Path(s.rejects_file).read_bytes()


def test_prepare_dicom_reads_headers_only_through_the_allow_listed_reader(sample_archive, tmp_path, monkeypatch):
    """Names, birth dates, raw patient IDs and accession numbers stay out of the manifest and the
    rejects; the study uid, view, accession-keyed report and patient key still arrive (as keyed
    hashes), and every pydicom read is the header reader's."""
    import sys

    import pydicom

    from cxrtool.data import prepare_dicom_folder
    from cxrtool.privacy import pseudonym

    phi = {"PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "PatientID": "MRN-4242-XYZ",
           "AccessionNumber": "ACC-777123", "OtherPatientIDs": "OTHER-555"}
    pacs = tmp_path / "pacs"
    (pacs / "a").mkdir(parents=True)
    ds = pydicom.dcmread(sample_archive / "pacs" / "PAT0001" / "STUDY0001" / "SERIES01" / "IM000001")
    for name, value in phi.items():
        setattr(ds, name, value)
    ds.save_as(pacs / "a" / "IM000001")
    uid1 = str(ds.StudyInstanceUID)
    del ds.PatientID  # a second study without a PatientID: its key falls back to the study uid
    ds.StudyInstanceUID = uid2 = pydicom.uid.generate_uid()
    ds.AccessionNumber = "ACC-888"
    ds.save_as(pacs / "a" / "IM000002")
    reports = tmp_path / "reports.csv"
    reports.write_text("AccessionNumber,report\n"
                       "ACC-777123,\"FINDINGS: Small left pleural effusion. IMPRESSION: Effusion.\"\n"
                       "ACC-000,\"IMPRESSION: orphan report\"\n")

    callers: list[tuple[str, bool]] = []
    dcmread = pydicom.dcmread

    def spy(*args, **kwargs):
        callers.append((sys._getframe(1).f_globals["__name__"], bool(kwargs.get("stop_before_pixels"))))
        return dcmread(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", spy)
    s = prepare_dicom_folder(pacs, tmp_path / "d.parquet", reports_csv=reports, match_on="accession",
                             pseudonym_key="a-test-secret-key")
    assert callers and set(callers) == {("cxrtool.io.dicom_header", True)}
    studies = {x.study_key: x for x in read_manifest(tmp_path / "d.parquet")}
    one, two = studies[uid1], studies[uid2]
    assert one.patient_key == pseudonym(phi["PatientID"], "a-test-secret-key") and \
        two.patient_key == pseudonym(uid2, "a-test-secret-key")
    assert one.impression == "Effusion." and one.sides == {"Pleural Effusion": "left"} and one.images[0].view == "PA"
    assert two.report is None
    blob = (tmp_path / "d.parquet").read_bytes() + Path(s.rejects_file).read_bytes()
    for value in [*phi.values(), "Doe", "Jane", "ACC-888", "ACC-000"]:
        assert value.encode() not in blob, value
