"""Rebuild sample_data/ from ../shared/data (the open data folder of the project).

Selection is deterministic: NIH ChestX-ray14 patients whose salted hash falls below 0.10 are
held out for the sample (and therefore never used to train the bundled default model; see
scripts/build_default_model.py, which excludes the same patients). Run: make sample-data
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from cxrtool.data.manifest import split_for_patient

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data"
OUT = REPO / "sample_data"
ARCHIVE = OUT / "archive"
HOLDOUT_SALT = "sample"
HOLDOUT_FRACTION = 0.10
FINDINGS = ["atelectasis", "cardiomegaly", "consolidation", "edema", "effusion", "emphysema", "fibrosis",
            "hernia", "infiltration", "mass", "nodule", "pleural_thickening", "pneumonia", "pneumothorax",
            "no_finding"]

# Real DICOMs from the DICOM compression test suites (NEMA WG04) and the SIIM/NIH set. Layout:
# patient/study/series/file, as a PACS export. Some files keep no extension, as PACS exports do.
DICOMS = [
    ("CR_chest_PA_siim_jpegbaseline.dcm", "PAT0001/STUDY0001/SERIES01/IM000001"),
    ("RG1_CR_chest_J2KI.dcm", "PAT0002/STUDY0001/SERIES01/IM000001.dcm"),
    ("RG2_CR_hip_JPLY_fixed.dcm", "PAT0003/STUDY0001/SERIES01/IM000001"),
    ("RG2_CR_hip_RLE.dcm", "PAT0003/STUDY0001/SERIES02/IM000001"),
    ("RG3_CR_tibia_UNC.dcm", "PAT0004/STUDY0001/SERIES01/IM000001.dcm"),
    ("RG3_CR_tibia_J2KI.dcm", "PAT0004/STUDY0001/SERIES02/IM000001.dcm"),
    ("RG3_CR_tibia_J2KR.dcm", "PAT0004/STUDY0001/SERIES03/IM000001.dcm"),
    ("RG3_CR_tibia_JLSL.dcm", "PAT0004/STUDY0001/SERIES04/IM000001"),
    ("RG3_CR_tibia_JLSN.dcm", "PAT0004/STUDY0001/SERIES05/IM000001"),
    ("RG3_CR_tibia_JPLL.dcm", "PAT0004/STUDY0001/SERIES06/IM000001"),
    ("RG3_CR_tibia_RLE.dcm", "PAT0004/STUDY0001/SERIES07/IM000001"),
]
HANNOVER_COUNT = 8


def held_out(patient_id: str) -> bool:
    return split_for_patient(patient_id, validate=0.0, test=HOLDOUT_FRACTION, salt=HOLDOUT_SALT) == "test"


def write_structured_report(path: Path) -> None:
    """A DICOM Basic Text SR with no pixels: archives hold these; embedding must skip them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.PatientName = "Sample^Synthetic"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(ARCHIVE, ignore_errors=True)
    ARCHIVE.mkdir(parents=True, exist_ok=True)
    rows_out = []
    with open(SHARED / "nih_512" / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if not held_out(row["patient_id"]):
                continue
            stem = Path(row["image_index"]).stem  # 00000147_001
            pid = f"{int(row['patient_id']):08d}"
            rel = f"nih/{pid}/study_{stem.split('_')[1]}/{stem}.jpg"
            (ARCHIVE / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SHARED / "nih_512" / row["path"], ARCHIVE / rel)
            rows_out.append({"path": rel, "patient_id": pid, "view": row["view"], "findings": row["findings"],
                             **{f: row[f] for f in FINDINGS}})
    with open(OUT / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows_out[0]))
        writer.writeheader()
        writer.writerows(rows_out)
    for name, rel in DICOMS:
        dst = ARCHIVE / "pacs" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED / "dicom" / name, dst)
    write_structured_report(ARCHIVE / "pacs" / "PAT0002" / "STUDY0001" / "SERIES99" / "SR000001")
    pngs = sorted((SHARED / "hannover_covid" / "png").glob("*.png"))[:HANNOVER_COUNT]
    for i, src in enumerate(pngs, 1):
        dst = ARCHIVE / "hannover" / f"case{i:02d}" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    # Which DICOM came from which test-suite file: lets tests pair compressed files with twins.
    with open(OUT / "dicom_sources.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "original_file"])
        for name, rel in DICOMS:
            writer.writerow([f"pacs/{rel}", name])
    print(f"{len(rows_out)} NIH images, {len(DICOMS)} DICOMs + 1 SR, {len(pngs)} Hannover PNGs -> {OUT}")


if __name__ == "__main__":
    main()
