"""The fixed, patient-disjoint split of the shared NIH data (one home for every script that needs it).

Test (held out from training *and* model selection): the sample_data patients
(``build_sample_data.held_out``) plus a further hash bucket of patients, about 28% of the 1,228
512-px images. The default model, the training experiments and the evaluation manifest all use
this split, so the figures in docs/benchmarks.md are on patients no model ever saw.

v5 (issue 28) trains on ``nih_512`` and ``nih_512_extra`` together (:func:`v5_studies`). Its
held-out set is v4's, unchanged, plus a keyed share of the patients who are *only* in the extra
folder (``EXTRA_SALT``/``EXTRA_FRACTION``); a patient in both folders follows their ``nih_512``
assignment, so no v4 held-out patient ever trains v5 and v4 and v5 can be compared on one split.
Validation is the same per-patient hash in both folders (``hashed_split``), so v4's validation
patients stay validation patients. Run this file to print the split's counts.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from pathlib import Path

from build_sample_data import FINDINGS, held_out

from cxrtool.data.manifest import Study, split_for_patient
from cxrtool.data.sources.csv_table import read_csv_studies

EVAL_SALT = "cxrtool-eval-v2"
EVAL_FRACTION = 0.17
# New patients (nih_512_extra only): held out at the rate the old rule holds out patients by
# design, 0.10 + 0.90 * 0.17 = 0.253, under a salt of their own (the old buckets stay as they are).
EXTRA_SALT = "cxrtool-eval-v5-extra"
EXTRA_FRACTION = 0.25
# held_out_digest of v5's held-out patients when the split was fixed (docs/model-v5.md): training
# and evaluation scripts refuse a split that no longer gives it (changed data or rule).
V5_HELD_OUT_DIGEST = "c3f3fd7b12c94d19"
NIH_FOLDERS = {"nih_512": "nih-chestxray14", "nih_512_extra": "nih-chestxray14-extra"}  # folder -> source


def eval_bucket(patient: str) -> bool:
    return split_for_patient(patient, validate=0.0, test=EVAL_FRACTION, salt=EVAL_SALT) == "test"


def is_test_patient(patient: str) -> bool:
    return held_out(patient) or eval_bucket(patient)


def extra_bucket(patient: str) -> bool:
    """A new (nih_512_extra-only) patient's keyed draw into the v5 held-out set."""
    return split_for_patient(patient, validate=0.0, test=EXTRA_FRACTION, salt=EXTRA_SALT) == "test"


def read_folder(shared: Path, folder: str, validate_fraction: float = 0.1) -> list[Study]:
    """One NIH folder's studies (sides from its radiologist boxes where it has them)."""
    return read_csv_studies(shared / folder / "labels.csv", patient_col="patient_id", view_col="view",
                            label_cols=FINDINGS, source=NIH_FOLDERS[folder], validate_fraction=validate_fraction)


def nih_studies(shared: Path, validate_fraction: float = 0.1) -> tuple[list[Study], list[Study]]:
    """(train+validate studies, test studies) from ``shared/nih_512/labels.csv`` (sides from its boxes)."""
    studies = read_folder(shared, "nih_512", validate_fraction)
    rest = [s for s in studies if not is_test_patient(s.patient_key)]
    test = [s for s in studies if is_test_patient(s.patient_key)]
    for s in test:
        s.split = "test"
    assert not {s.patient_key for s in rest} & {s.patient_key for s in test}
    return rest, test


def v5_test_patients(shared: Path) -> set[str]:
    """Held-out patients of the v5 union: v4's (all nih_512 test patients) plus the new patients'
    keyed share; patients in both folders keep their nih_512 assignment."""
    old = {s.patient_key for s in read_folder(shared, "nih_512", 0.0)}
    new = {s.patient_key for s in read_folder(shared, "nih_512_extra", 0.0)} - old
    return {p for p in old if is_test_patient(p)} | {p for p in new if extra_bucket(p)}


def v5_studies(shared: Path, validate_fraction: float = 0.1) -> tuple[list[Study], list[Study]]:
    """(train+validate studies, test studies) of nih_512 + nih_512_extra, split by patient across both."""
    studies = [s for folder in NIH_FOLDERS for s in read_folder(shared, folder, validate_fraction)]
    test_patients = v5_test_patients(shared)
    rest = [s for s in studies if s.patient_key not in test_patients]
    test = [s for s in studies if s.patient_key in test_patients]
    for s in test:
        s.split = "test"
    assert not {s.patient_key for s in rest} & {s.patient_key for s in test}
    return rest, test


def held_out_digest(patients: set[str]) -> str:
    """sha256 of the sorted held-out patient ids: docs/model-v5.md records it, so a changed split shows."""
    return hashlib.sha256("\n".join(sorted(patients, key=int)).encode()).hexdigest()[:16]


def split_counts(studies: list[Study]) -> str:
    """A Markdown table: images / patients per split and source, and positives per label per split."""
    splits = ("train", "validate", "test")
    lines = ["| | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]

    def row(name: str, keep) -> str:
        cells = []
        for sp in splits:
            mine = [s for s in studies if s.split == sp and keep(s)]
            cells.append(f"{sum(len(s.images) for s in mine)} / {len({s.patient_key for s in mine})}")
        return f"| {name} | " + " | ".join(cells) + " |"

    lines.append(row("images / patients, both folders", lambda s: True))
    for source in NIH_FOLDERS.values():
        lines.append(row(f"images / patients, {source}", lambda s, src=source: s.source == src))
    positives = {sp: Counter(k for s in studies if s.split == sp for k, v in s.labels.items() if v == 1)
                 for sp in splits}
    sided = {sp: Counter(k for s in studies if s.split == sp for k, v in s.sides.items() if v in ("left", "right"))
             for sp in splits}
    for label in sorted({k for c in positives.values() for k in c}):
        lines.append(f"| {label} (positive; one-sided) | "
                     + " | ".join(f"{positives[sp][label]}; {sided[sp][label]}" for sp in splits) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    rest, test = v5_studies(shared)
    print(split_counts(rest + test))
    test_patients = {s.patient_key for s in test}
    print(f"\nheld-out patients: {len(test_patients)}, digest {held_out_digest(test_patients)}")
    v4_rest, v4_test = nih_studies(shared)
    v4_patients = {s.patient_key for s in v4_test}
    assert v4_patients <= test_patients and {s.patient_key for s in v4_rest}.isdisjoint(test_patients)
    v4_val = {s.patient_key for s in v4_rest if s.split == "validate"}
    assert v4_val <= {s.patient_key for s in rest if s.split == "validate"}
    print(f"v4's {len(v4_patients)} held-out patients (nih_512) are all still held out; "
          f"its {len(v4_val)} validation patients are all still validation patients")
