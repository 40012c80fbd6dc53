"""The fixed, patient-disjoint split of the shared NIH data (one home for every script that needs it).

Test (held out from training *and* model selection): the sample_data patients
(``build_sample_data.held_out``) plus a further hash bucket of patients, about 28% of the 1,228
512-px images. The default model, the training experiments and the evaluation manifest all use
this split, so the figures in docs/benchmarks.md are on patients no model ever saw.
"""

from __future__ import annotations

from pathlib import Path

from build_sample_data import FINDINGS, held_out

from cxrtool.data.manifest import Study, split_for_patient
from cxrtool.data.sources.csv_table import read_csv_studies

EVAL_SALT = "cxrtool-eval-v2"
EVAL_FRACTION = 0.17


def eval_bucket(patient: str) -> bool:
    return split_for_patient(patient, validate=0.0, test=EVAL_FRACTION, salt=EVAL_SALT) == "test"


def is_test_patient(patient: str) -> bool:
    return held_out(patient) or eval_bucket(patient)


def nih_studies(shared: Path, validate_fraction: float = 0.1) -> tuple[list[Study], list[Study]]:
    """(train+validate studies, test studies) from ``shared/nih_512/labels.csv`` (sides from its boxes)."""
    studies = read_csv_studies(shared / "nih_512" / "labels.csv", patient_col="patient_id", view_col="view",
                               label_cols=FINDINGS, source="nih-chestxray14", validate_fraction=validate_fraction)
    rest = [s for s in studies if not is_test_patient(s.patient_key)]
    test = [s for s in studies if is_test_patient(s.patient_key)]
    for s in test:
        s.split = "test"
    assert not {s.patient_key for s in rest} & {s.patient_key for s in test}
    return rest, test
