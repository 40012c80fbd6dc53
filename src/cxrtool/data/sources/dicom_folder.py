"""A DICOM folder (PACS export) plus a reports CSV keyed by StudyInstanceUID or accession number.

Images are grouped into studies by StudyInstanceUID, with views from ViewPosition. Headers are read
only through the allow-listed reader (``io/dicom_header.py``), so no patient name, birth date, raw ID
or accession number reaches this module. Patients get a pseudonymous key: a keyed hash of PatientID
(set your own key with ``pseudonym_key`` / ``--pseudonym-key`` or $CXRTOOL_PSEUDONYM_KEY). Reports
keyed by accession number are matched on the same keyed hash. Objects without pixels (SR,
presentation states) are listed as rejects, not studies. Sides of findings come
from the report's findings and impression (``data/laterality.py``).
"""

from __future__ import annotations

import csv
from pathlib import Path

from cxrtool.data.laterality import sides_for_study
from cxrtool.data.manifest import Study, StudyImage
from cxrtool.data.prompts import PromptBank
from cxrtool.data.sections import parse_report
from cxrtool.data.sources.common import Reject, hashed_split, open_text
from cxrtool.errors import DecodeError, ManifestError
from cxrtool.io.dicom_header import UnreadableDicomError, accession_pseudonym, read_dicom_header
from cxrtool.io.discover import discover_archive
from cxrtool.privacy import pseudonym, resolve_key


def read_dicom_folder_studies(folder: str | Path, reports_csv: str | Path | None = None, match_on: str = "study_uid",
                              key_col: str | None = None, report_col: str = "report",
                              pseudonym_key: str | None = None, validate_fraction: float = 0.1,
                              test_fraction: float = 0.0, bank: PromptBank | None = None,
                              rejects: list[Reject] | None = None) -> list[Study]:
    folder = Path(folder)
    if not folder.exists():
        raise ManifestError(f"{folder}: not found")
    if match_on not in ("study_uid", "accession"):
        raise ManifestError(f"match_on must be 'study_uid' or 'accession', not {match_on!r}")
    rejects = [] if rejects is None else rejects
    bank = bank or PromptBank.load()
    secret = resolve_key(pseudonym_key)  # a manifest needs a patient key for splits: never a public one
    reports: dict[str, str] = {}
    if reports_csv:
        key_col = key_col or ("StudyInstanceUID" if match_on == "study_uid" else "AccessionNumber")
        with open_text(Path(reports_csv)) as fh:
            reader = csv.DictReader(fh)
            for col in (key_col, report_col):
                if col not in (reader.fieldnames or []):
                    raise ManifestError(f"{reports_csv}: no column {col!r}; columns are {reader.fieldnames}")
            reports = {r[key_col].strip(): r[report_col] for r in reader if r[key_col].strip()}
            lines = {r: i for i, r in enumerate(reports, start=2)}
    # the reader gives accession numbers only as keyed hashes: hash the reports' keys the same way
    by_accession = {accession_pseudonym(k, secret): k for k in reports} if match_on == "accession" else {}
    studies: dict[str, Study] = {}
    matched: set[str] = set()
    for f in discover_archive(folder):
        if f.kind != "dicom":
            continue
        try:
            header = read_dicom_header(f.path, secret)
        except UnreadableDicomError as exc:  # the parser's type only: its message may quote the file
            rejects.append(Reject(f.rel, f"unreadable DICOM header ({exc.cause})", "dropped"))
            continue
        except DecodeError:  # parsed, but no attributes of an object: nothing to group
            header = {}
        uid = header.get("StudyInstanceUID")
        if not header.get("has_pixels") or not uid:
            rejects.append(Reject(f.rel, f"not an image ({header.get('Modality') or 'no pixels'})", "dropped"))
            continue
        study = studies.get(uid)
        if study is None:
            patient = header["patient_key"] or pseudonym(uid, secret)  # no PatientID: the study stands alone
            study = Study(uid, patient, hashed_split(patient, validate_fraction, test_fraction), "dicom-folder", [])
            lookup = uid if match_on == "study_uid" else by_accession.get(header["accession_key"] or "", "")
            if lookup in reports:
                matched.add(lookup)
                sections = parse_report(reports[lookup])
                study.findings, study.impression, study.report = sections.findings, sections.impression, sections.full
                study.text = sections.main_text() or sections.full
                study.sides = sides_for_study({}, text=sections.observations())
            studies[uid] = study
        study.images.append(StudyImage(str(f.path), str(header.get("ViewPosition", "") or "").upper()))
    for study in studies.values():
        if not study.report:
            reason = "no report in the reports CSV" if reports_csv else "no report text (no reports CSV given)"
            rejects.append(Reject(study.study_key, reason, "kept", study.study_key))
    for key in sorted(set(reports) - matched, key=lambda k: lines[k]):  # the key itself may be an identifier
        rejects.append(Reject(f"{Path(reports_csv).name}:{lines[key]}", f"report matches no study ({match_on})",
                              "dropped"))
    return list(studies.values())
