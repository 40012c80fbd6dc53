"""Manifest schema, CSV adapter, prompt bank."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cxrtool.data import PromptBank, prepare_csv, read_manifest
from cxrtool.data.sources.csv_table import read_csv_studies
from cxrtool.errors import ManifestError

from .conftest import SAMPLE


def test_prompt_bank_maps_dataset_column_names():
    bank = PromptBank.load()
    assert bank.canonical("effusion") == "Pleural Effusion"
    assert bank.canonical("no_finding") == "No Finding"
    assert bank.canonical("Pleural_Thickening") == "Pleural Thickening"


def test_eval_text_is_deterministic_positives_only():
    bank = PromptBank.load()
    labels = {"Cardiomegaly": 1, "effusion": 1, "Edema": 0}
    assert bank.to_text(labels) == bank.to_text(dict(reversed(labels.items())))
    assert "edema" not in bank.to_text(labels)
    assert bank.to_text({"Edema": 0}) == bank.prompts("No Finding").positive[0]


def test_train_text_draws_vary_and_include_negatives_and_uncertain():
    bank = PromptBank.load()
    rng = random.Random(0)
    labels = {"Cardiomegaly": 1, "Edema": -1, "Pneumothorax": 0}
    draws = {bank.to_text(labels, rng) for _ in range(30)}
    assert len(draws) > 5
    joined = " ".join(draws)
    assert "pneumothorax" in joined and any(u in joined for u in bank.prompts("Edema").uncertain)


def test_negatives_are_never_made_by_prefixing_no():
    bank = PromptBank.load()
    rng = random.Random(0)
    for _ in range(50):
        text = bank.to_text({"No Finding": 0, "Atelectasis": 0, "Mass": 1}, rng)
        assert "no no finding" not in text.lower()


def test_unknown_label_gets_generic_sentences():
    bank = PromptBank.load()
    text = bank.to_text({"Tuberculosis": 1})
    assert "tuberculosis" in text


def test_csv_to_manifest_has_native_nested_columns(tmp_path):
    out = tmp_path / "m.parquet"
    summary = prepare_csv(SAMPLE / "labels.csv", out, image_root=SAMPLE / "archive", patient_col="patient_id",
                          view_col="view", label_cols=["cardiomegaly", "effusion", "no_finding"])
    assert summary.missing_images == 0 and summary.studies == summary.images
    schema = pq.read_schema(out)
    assert pa.types.is_list(schema.field("images").type)
    assert pa.types.is_struct(schema.field("images").type.value_type)
    assert pa.types.is_map(schema.field("labels").type)
    studies = read_manifest(out)
    assert all(s.text for s in studies)
    assert {s.split for s in studies} <= {"train", "validate", "test"}
    by_patient = {}
    for s in studies:
        by_patient.setdefault(s.patient_key, set()).add(s.split)
    assert all(len(v) == 1 for v in by_patient.values())  # a patient never spans splits


def test_csv_rows_group_into_studies(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text(
        "path,study,report\na.png,s1,Small left effusion.\nb.png,s1,Small left effusion.\nc.png,s2,Clear.\n")
    studies = read_csv_studies(csv_path, study_col="study", report_col="report")
    assert [len(s.images) for s in studies] == [2, 1]
    assert studies[0].text == "Small left effusion."


def test_missing_column_is_reported(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("file_name,edema\na.png,1\n")
    with pytest.raises(ManifestError, match="image"):
        read_csv_studies(csv_path)


def test_a_patient_in_two_splits_is_refused(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("path,patient,split,edema\na.png,p1,train,1\nb.png,p1,test,0\n")
    with pytest.raises(ManifestError, match="both"):
        prepare_csv(csv_path, tmp_path / "m.parquet", patient_col="patient", split_col="split", check_files=False)


def test_unparseable_label_row_is_dropped_and_reported(tmp_path):
    import json

    csv_path = tmp_path / "t.csv"
    csv_path.write_text("path,edema\na.png,1\nb.png,maybe\n")
    s = prepare_csv(csv_path, tmp_path / "m.parquet", label_cols=["edema"], check_files=False)
    assert s.studies == 1 and s.dropped_rows == 1
    reject = json.loads(Path(s.rejects_file).read_text())
    assert reject["where"] == "t.csv:3" and "maybe" in reject["reason"] and reject["action"] == "dropped"


def test_sampled_negatives_are_capped_and_seeded():
    bank = PromptBank.load()
    labels = {"Cardiomegaly": 1, **{k: 0 for k in ("Edema", "Pneumothorax", "Atelectasis", "Mass", "Nodule")}}
    negatives = {s for k in labels if k != "Cardiomegaly" for s in bank.prompts(k).negative}
    for cap in (0, 1, 3):
        rng = random.Random(7)
        for _ in range(20):
            text = bank.to_text(labels, rng, max_negatives=cap)
            sentences = [x.strip() for x in re.findall(r"[^.]+\.", text)]
            assert sum(x in negatives for x in sentences) <= cap
    a = [bank.to_text(labels, random.Random(3)) for _ in range(2)]
    assert a[0] == a[1]  # same seed, same draw


def test_queries_naming_a_finding_expand_to_the_banks_sentences_with_their_side():
    from cxrtool.data.prompts import PromptBank

    bank = PromptBank.load()
    card = bank.expand_query("Cardiomegaly")
    assert card[0] == "Cardiomegaly" and set(card[1:]) == set(bank.prompts("Cardiomegaly").positive)
    left = bank.expand_query("left pleural effusion")
    assert len(left) > 2 and all("left" in s.lower() for s in left) and not any("right" in s for s in left)
    both = bank.expand_query("effusions")
    assert both and not any("left" in s or "right" in s for s in both[1:])
    assert bank.expand_query("right-sided pneumothorax")[1:] == bank.prompts("Pneumothorax").positive_for("right")
    for typed in ("left cardiomegaly", "no finding", "small nodule in the right upper lobe", "heart"):
        assert bank.expand_query(typed) is None, typed
