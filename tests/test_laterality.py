"""Laterality (issue #8): sides from boxes and report text, flips, lateralised prompts, the manifest
column, the converters that fill it, and the left-vs-right metrics on hand-computed fixtures."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.data import PromptBank, prepare_csv, prepare_nih, read_manifest
from cxrtool.data.laterality import (
    LATERAL_LABELS,
    Box,
    box_side,
    parse_bbox_json,
    sides_for_study,
    sides_from_boxes,
    sides_from_text,
)
from cxrtool.data.manifest import Study, StudyImage, write_manifest
from cxrtool.data.sides import BILATERAL, LEFT, RIGHT, flip_sides, mentions_side, swap_sides
from cxrtool.data.sources.openi import MESH_PATH, read_openi_studies
from cxrtool.errors import ManifestError, ModelError
from cxrtool.evaluate.eval_set import eval_set_from_manifest
from cxrtool.evaluate.laterality import left_right_auroc, side_codes, topk_side_accuracy, topk_side_counts

from .conftest import SAMPLE
from .test_sources import SHARED, _openi_xml

runner = CliRunner()


# ------------------------------------------------------------------------------------ boxes
def test_box_left_of_the_image_midline_is_the_patients_right():
    assert box_side(100, 200) == RIGHT  # centre x 200 < 512: image left = patient right
    assert box_side(700, 200) == LEFT
    assert box_side(100, 100, width=512) == RIGHT and box_side(300, 100, width=512) == LEFT


def test_box_straddling_the_midline_is_bilateral_but_a_slight_overlap_keeps_its_side():
    assert box_side(300, 500) == BILATERAL  # 212 px left of the midline, 288 right: 42 % / 58 %
    assert box_side(212, 400) == RIGHT  # 300 px / 100 px: 25 % across is below the 30 % rule
    assert box_side(431, 282) == LEFT  # nih_512's left retrocardiac effusion box: 29 % across


def test_boxes_of_one_finding_combine_by_union_and_cardiomegaly_has_no_side():
    boxes = [Box("Effusion", 100, 700, 150, 100), Box("Effusion", 800, 700, 150, 100),
             Box("Pneumothorax", 650, 80, 200, 90), Box("Nodule", 150, 300, 40, 40), Box("Nodule", 160, 500, 40, 40),
             Box("Cardiomegaly", 430, 460, 410, 340), Box("Infiltrate", 200, 300, 650, 400)]
    assert sides_from_boxes(boxes) == {"Pleural Effusion": BILATERAL, "Pneumothorax": LEFT, "Nodule": RIGHT,
                                       "Infiltration": BILATERAL}


def test_bbox_json_cells_parse_or_fail_with_a_reason():
    assert parse_bbox_json('[["Effusion", 617.7, 599.2, 100.8, 179.9]]') == [Box("Effusion", 617.7, 599.2, 100.8,
                                                                                   179.9)]
    assert parse_bbox_json("") == [] and parse_bbox_json(None) == []
    with pytest.raises(ValueError, match="bbox_json"):
        parse_bbox_json('[["Effusion", 1, 2]]')


@pytest.mark.skipif(not (SHARED / "nih_512").is_dir(), reason="needs the project's open-data folder")
def test_real_heart_boxes_sit_on_the_patients_left():
    """The orientation convention on real films: the heart lies mostly on the patient's left."""
    with open(SHARED / "nih_512" / "labels.csv", newline="") as fh:
        hearts = [b for r in csv.DictReader(fh) for b in parse_bbox_json(r["bbox_json"]) if b.finding == "Cardiomegaly"]
    sides = [box_side(b.x + b.w / 2 - 1, 2) for b in hearts]  # the side of a 2-px box at each heart box's centre
    assert len(hearts) > 50 and sides.count(LEFT) / len(sides) > 0.9


# ------------------------------------------------------------------------------------ text
@pytest.mark.parametrize("text, sides", [
    ("Small left pleural effusion.", {"Pleural Effusion": LEFT}),
    ("Right-sided pneumothorax.", {"Pneumothorax": RIGHT}),
    ("Left lower lobe atelectasis.", {"Atelectasis": LEFT}),
    ("Bibasilar atelectasis.", {"Atelectasis": BILATERAL}),
    ("Patchy opacities in both lung bases.", {"Lung Opacity": BILATERAL}),
    ("Small right and moderate left pleural effusions.", {"Pleural Effusion": BILATERAL}),
    ("Left greater than right pleural effusions.", {"Pleural Effusion": BILATERAL}),
    ("Effusion on the right and atelectasis on the left.", {"Pleural Effusion": RIGHT, "Atelectasis": LEFT}),
    ("Right effusion and left atelectasis.", {"Pleural Effusion": RIGHT, "Atelectasis": LEFT}),
    ("Right pleural effusion. Small left apical pneumothorax.", {"Pleural Effusion": RIGHT, "Pneumothorax": LEFT}),
    ("Opacity in the lingula.", {"Lung Opacity": LEFT}),
    ("Right upper lobe nodule measures 1.5 cm.", {"Nodule": RIGHT}),
    ("No pneumothorax but small left effusion.", {"Pleural Effusion": LEFT}),
    ("No change in the small left effusion.", {"Pleural Effusion": LEFT}),
])
def test_report_text_gives_the_side_of_the_findings_it_names(text, sides):
    assert sides_from_text(text) == sides


@pytest.mark.parametrize("text", [
    "No left effusion.",
    "No pneumothorax or left effusion.",
    "The left pneumothorax has resolved.",
    "Interval resolution of the right pleural effusion.",
    "Rule out right pneumothorax.",
    "Cannot exclude small left pneumothorax.",
    "Left PICC line tip in the SVC. No pneumothorax.",
    "Stable small pericardial effusion on the left.",
    "Left chest tube in place with small residual pneumothorax.",  # side of the tube, not said of the finding
])
def test_negated_or_unattached_sides_do_not_count(text):
    assert sides_from_text(text) == {}


def test_one_finding_named_on_both_sides_in_two_sentences_is_bilateral():
    assert sides_from_text("Right pleural effusion. No left effusion.") == {"Pleural Effusion": RIGHT}
    assert sides_from_text("Right pleural effusion. Small left effusion.") == {"Pleural Effusion": BILATERAL}


def test_study_sides_prefer_boxes_and_drop_negative_labels():
    boxes = [Box("Effusion", 700, 700, 100, 100)]  # patient's left
    text = "Small right pleural effusion. Right lower lobe atelectasis. Left pneumothorax."
    assert sides_for_study({"Pneumothorax": 0}, boxes, text) == {"Atelectasis": RIGHT, "Pleural Effusion": LEFT}


@pytest.mark.skipif(not (SHARED / "openi_reports").is_dir(), reason="needs the project's open-data folder")
def test_real_openi_reports_agree_with_their_mesh_side_qualifiers(tmp_path):
    """MeSH headings such as 'Pleural Effusion/left/small' are coded by people; where both give a
    side, the text extractor agrees on ~98 % (848 of 867 on the full set)."""
    import tarfile
    import xml.etree.ElementTree as ET

    mapping = json.loads(MESH_PATH.read_text())["map"]
    agree = total = 0
    with tarfile.open(SHARED / "openi_reports" / "NLMCXR_reports.tgz") as tar:
        for member in tar.getmembers():
            if not member.name.endswith(".xml"):
                continue
            doc = ET.fromstring(tar.extractfile(member).read())
            texts = [a.text or "" for a in doc.iter("AbstractText") if a.get("Label") in ("FINDINGS", "IMPRESSION")]
            found = sides_from_text(" ".join(texts))
            coded: dict[str, str] = {}
            for e in doc.iter():
                parts = [p.strip() for p in (e.text or "").split("/")] if e.tag in ("major", "minor") else []
                label = mapping.get(parts[0]) if parts else None
                side = next((s for s in (BILATERAL, LEFT, RIGHT) if s in parts[1:]), None)
                if label in found and side:
                    coded[label] = BILATERAL if coded.get(label, side) != side else side
            total += len(coded)
            agree += sum(found[k] == v for k, v in coded.items())
    assert total > 500 and agree / total > 0.95


# ------------------------------------------------------------------------------------ flips
def test_swap_sides_keeps_case_and_hyphenation_and_leaves_bilateral_alone():
    text = "Left-sided effusion. RIGHT apical pneumothorax; leftward shift, levoscoliosis, bilateral opacities."
    assert swap_sides(text) == ("Right-sided effusion. LEFT apical pneumothorax; rightward shift, dextroscoliosis, "
                                "bilateral opacities.")
    assert swap_sides(swap_sides(text)) == text
    assert swap_sides("the lungs are clear.") == "the lungs are clear."


@pytest.mark.parametrize("text", [
    "Small left pleural effusion. Right lower lobe atelectasis.",
    "Effusion on the right and atelectasis on the left. No left pneumothorax.",
    "Bibasilar atelectasis. Right upper lobe nodule.",
])
def test_swapped_text_reads_as_the_flipped_side_map(text):
    assert sides_from_text(swap_sides(text)) == flip_sides(sides_from_text(text))


def test_flip_sides_swaps_left_and_right_only():
    sides = {"Pleural Effusion": LEFT, "Pneumothorax": RIGHT, "Atelectasis": BILATERAL}
    assert flip_sides(sides) == {"Pleural Effusion": RIGHT, "Pneumothorax": LEFT, "Atelectasis": BILATERAL}
    assert flip_sides(flip_sides(sides)) == sides


def test_one_side_vocabulary_for_queries_text_and_flips():
    """data/sides.py: a query's leading side, side mentions and the mirror swap read the same words."""
    from cxrtool.data.sides import SIDES, split_query_side

    for side in SIDES:
        assert split_query_side(f" {side.title()}-sided  Effusion. ") == (side, "effusion")
        assert split_query_side(f"{side} pleural effusion") == (side, "pleural effusion")
        assert mentions_side(f"{side} effusion")
        assert swap_sides(f"{side} effusion") == f"{flip_sides({'x': side})['x']} effusion"
    assert split_query_side("effusion on the left") == (None, "effusion on the left")


# ------------------------------------------------------------------------------------ prompts
def test_every_lateral_finding_has_sided_templates_in_the_bank():
    bank = PromptBank.load()
    for label in LATERAL_LABELS:
        p = bank.prompts(label)
        assert p.lateral and p.bilateral, label
        assert all("{side}" in t for t in p.sided + p.sided_uncertain), label
        assert p.positive_for(None)[0] == p.positive[0]  # eval text of a study without sides is unchanged


def test_eval_text_names_the_known_side():
    bank = PromptBank.load()
    labels = {"effusion": 1, "Pneumothorax": 1, "Atelectasis": 1, "Cardiomegaly": 1}
    text = bank.to_text(labels, sides={"effusion": LEFT, "Pneumothorax": RIGHT, "Atelectasis": BILATERAL})
    assert text == "bibasilar atelectasis. cardiomegaly. left pleural effusion. right pneumothorax."
    assert bank.to_text(labels) == "there is atelectasis. cardiomegaly. pleural effusion. pneumothorax."


def test_train_draws_use_the_known_side_and_never_guess_an_unknown_one():
    bank = PromptBank.load()
    rng = random.Random(0)
    for _ in range(100):
        left = bank.to_text({"Pleural Effusion": 1, "Pneumothorax": -1}, rng, sides={"Pleural Effusion": LEFT,
                                                                                    "Pneumothorax": LEFT})
        assert "left" in left and "right" not in left
        unknown = bank.to_text({"Pleural Effusion": 1, "Pneumothorax": -1, "Mass": 1, "Nodule": 1}, rng)
        assert not mentions_side(unknown), unknown
    draws = {bank.to_text({"Pneumothorax": 1}, rng, sides={"Pneumothorax": RIGHT}) for _ in range(50)}
    assert len(draws) > 3 and all("right" in d for d in draws)


def test_a_sided_template_without_its_slot_is_refused(tmp_path):
    path = tmp_path / "bank.json"
    path.write_text(json.dumps({"labels": {"Pneumothorax": {"positive": ["pneumothorax."],
                                                            "sided": {"positive": ["left pneumothorax."]}}}}))
    with pytest.raises(ManifestError, match="slot"):
        PromptBank.load(path)


# ------------------------------------------------------------------------------------ manifest + converters
def _study(key: str, patient: str, split: str, sides: dict[str, str], labels: dict[str, int]) -> Study:
    return Study(key, patient, split, "test", [StudyImage(str(SAMPLE / "archive" / f"{key}.png"), "PA")],
                 labels=labels, sides=sides)


def test_manifest_round_trips_sides_and_reads_a_format_1_manifest(tmp_path):
    path = write_manifest([_study("a", "p1", "test", {"Pleural Effusion": LEFT}, {"Pleural Effusion": 1}),
                           _study("b", "p2", "test", {}, {})], tmp_path / "m.parquet")
    assert pa.types.is_map(pq.read_schema(path).field("sides").type)
    assert [s.sides for s in read_manifest(path)] == [{"Pleural Effusion": LEFT}, {}]
    old = pq.read_table(path).drop_columns(["sides"])
    pq.write_table(old, tmp_path / "old.parquet")
    assert [s.sides for s in read_manifest(tmp_path / "old.parquet")] == [{}, {}]


def test_manifest_refuses_an_unknown_side(tmp_path):
    with pytest.raises(ManifestError, match="side 'up'"):
        write_manifest([_study("a", "p1", "test", {"Pleural Effusion": "up"}, {})], tmp_path / "m.parquet")


def test_csv_boxes_and_reports_fill_sides_and_a_bad_box_cell_is_flagged(tmp_path):
    rows = [["path", "patient_id", "view", "effusion", "pneumothorax", "bbox_json", "report"],
            ["a.png", "1", "PA", "1", "0", '[["Effusion", 100, 700, 150, 100]]', ""],
            ["b.png", "2", "LATERAL", "1", "0", '[["Effusion", 100, 700, 150, 100]]', ""],  # no side on a lateral
            ["c.png", "3", "AP", "1", "0", "not json", ""],
            ["d.png", "4", "PA", "", "", "", "FINDINGS: Small left apical pneumothorax. IMPRESSION: No effusion."]]
    with open(tmp_path / "t.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    s = prepare_csv(tmp_path / "t.csv", tmp_path / "m.parquet", patient_col="patient_id", view_col="view",
                    report_col="report", check_files=False)
    studies = {x.study_key: x for x in read_manifest(tmp_path / "m.parquet")}
    assert studies["a.png"].sides == {"Pleural Effusion": RIGHT} and studies["a.png"].text == "right pleural effusion."
    assert studies["b.png"].sides == {} and studies["c.png"].sides == {}
    assert studies["d.png"].sides == {"Pneumothorax": LEFT}
    rejects = [json.loads(x) for x in Path(s.rejects_file).read_text().splitlines()]
    assert [(r["where"], r["action"]) for r in rejects if "bbox_json" in r["reason"]] == [("t.csv:4", "kept")]


def test_nih_bbox_list_gives_sides(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
        "00000001_000.png,Effusion|Atelectasis,0,1,57,M,PA\n00000002_000.png,Pneumothorax,0,2,40,F,AP\n")
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Effusion,120.5,600.2,200.0,150.1,,,\n"
        "00000001_000.png,Atelectasis,650,500,120,80,,,\n00000002_000.png,Pneumothorax,600,90,250,120,,,\n")
    prepare_nih(tmp_path / "Data_Entry_2017.csv", tmp_path / "n.parquet", bbox_list=tmp_path / "BBox_List_2017.csv",
                check_files=False)
    studies = {x.study_key: x for x in read_manifest(tmp_path / "n.parquet")}
    assert studies["00000001_000"].sides == {"Atelectasis": LEFT, "Pleural Effusion": RIGHT}
    assert studies["00000002_000"].sides == {"Pneumothorax": LEFT}
    (tmp_path / "bad.csv").write_text("Image Index,Finding Label\n00000001_000.png,Effusion\n")
    with pytest.raises(ManifestError, match="bad.csv:2"):
        prepare_nih(tmp_path / "Data_Entry_2017.csv", tmp_path / "n.parquet", bbox_list=tmp_path / "bad.csv")


def test_openi_sides_come_from_findings_and_impression_not_the_indication(tmp_path):
    (tmp_path / "1.xml").write_bytes(_openi_xml("CXR1", "Small right effusion. No left pneumothorax.",
                                                "Right effusion.", ["Pleural Effusion/right/small"], ["CXR1_1_IM-1"]))
    (tmp_path / "2.xml").write_bytes(_openi_xml("CXR2", "Clear lungs.", "Normal.", ["normal"], ["CXR2_1_IM-1"]))
    studies = {s.study_key: s for s in read_openi_studies(tmp_path)}
    assert studies["openi-CXR1"].sides == {"Pleural Effusion": RIGHT} and studies["openi-CXR2"].sides == {}


# ------------------------------------------------------------------------------------ metrics
# Six images: sides left, right, left, none, right, left (codes 1, -1, 1, 0, -1, 1).
CODES = np.array([1, -1, 1, 0, -1, 1])
SCORE_LEFT = np.array([0.875, 0.75, 0.125, 0.625, 0.25, 0.375])  # binary fractions: exact differences, exact ties
SCORE_RIGHT = np.array([0.125, 0.875, 0.25, 0.75, 0.625, 0.0625])


def test_topk_side_accuracy_hand_computed():
    # "left" top 3: images 0 (left), 1 (right), 3 (no side) -> 1 correct of 2 considered;
    # "right" top 3: images 1 (right), 3 (no side), 4 (right) -> 2 of 2; pooled 3 / 4; shared {1, 3}
    counts = topk_side_counts(SCORE_LEFT, SCORE_RIGHT, CODES, 3)
    assert counts == {"left_query": {"correct": 1, "considered": 2}, "right_query": {"correct": 2, "considered": 2},
                      "shared": 2}
    assert topk_side_accuracy(SCORE_LEFT, SCORE_RIGHT, CODES, 3) == 0.75
    assert np.isnan(topk_side_accuracy(SCORE_LEFT, SCORE_RIGHT, np.zeros(6), 3))  # nothing one-sided


def test_left_vs_right_auroc_hand_computed():
    # left - right: lefts 0.75, -0.125, 0.3125; rights -0.125, -0.375: 6 pairs, 5 won, one tie -> 5.5 / 6
    assert left_right_auroc(SCORE_LEFT, SCORE_RIGHT, CODES) == pytest.approx(5.5 / 6)


def test_a_model_deaf_to_the_side_word_scores_exactly_chance():
    rng = np.random.default_rng(0)
    scores, codes = rng.normal(size=200), rng.choice([1, -1, 0], 200, p=[0.6, 0.1, 0.3])
    for k in (5, 20, 100):
        assert topk_side_accuracy(scores, scores, codes, k) == 0.5
    assert left_right_auroc(scores, scores, codes) == 0.5


def test_side_codes_leave_out_negative_and_uncertain_findings():
    sides = np.array([LEFT, RIGHT, BILATERAL, "", LEFT, RIGHT], dtype=object)
    labels = np.array([1, 1, 1, np.nan, 0, -1])
    assert side_codes(sides, labels).tolist() == [1, -1, 0, 0, 0, 0]


# ------------------------------------------------------------------------------------ evaluate, end to end
@pytest.fixture
def sided_manifest(tmp_path):
    with open(SAMPLE / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:24]
    studies = []
    for i, r in enumerate(rows):
        side = (LEFT, RIGHT, BILATERAL)[i % 3]
        studies.append(Study(r["path"], r["patient_id"], "test" if i < 18 else "train", "nih",
                             [StudyImage(str(SAMPLE / "archive" / r["path"]), r["view"])],
                             labels={"Pleural Effusion": 1 if i % 2 else 0, "Pneumothorax": int(i % 4 == 0)},
                             text="pleural effusion.", sides={"Pleural Effusion": side} if i % 2 else {}))
    return write_manifest(studies, tmp_path / "manifest.parquet")


def test_eval_set_carries_sides_through_subsets(sided_manifest):
    es = eval_set_from_manifest(sided_manifest)
    assert set(es.sides) == {"Pleural Effusion"} and es.sides["Pleural Effusion"][:4].tolist() == ["", RIGHT, "",
                                                                                                  LEFT]
    sub = es.subset(np.arange(len(es)) % 2 == 1)
    assert sub.sides["Pleural Effusion"][:3].tolist() == [RIGHT, LEFT, BILATERAL]


def test_evaluate_reports_laterality_when_the_data_has_sides(tiny_model_dir, sided_manifest, tmp_path):
    out = tmp_path / "eval"
    res = runner.invoke(app, ["evaluate", str(sided_manifest), "--out", str(out), "--model", str(tiny_model_dir),
                              "--bootstrap", "30", "--no-probe", "--laterality-k", "3,6", "--json"])
    assert res.exit_code == 0, res.output
    lat = json.loads(res.stdout)["laterality"]
    assert lat["ks"] == [3, 6] and [r["label"] for r in lat["labels"]] == ["Pleural Effusion"]
    row = lat["labels"][0]  # test split: odd i < 18 -> sides right, left, bilateral, right, left, bilateral, ...
    assert (row["one_sided"], row["left"], row["right"], row["bilateral"]) == (6, 3, 3, 3)
    auc = row["auroc_left_vs_right"]
    assert auc["low"] <= auc["value"] <= auc["high"]
    assert [t["k"] for t in row["top_k"]] == [3, 6] and all(t["considered"] <= 2 * t["k"] for t in row["top_k"])
    assert row["prompts"]["left_example"] == "left pleural effusion."
    assert "**Laterality**" in (out / "report.md").read_text()
    bad = runner.invoke(app, ["evaluate", str(sided_manifest), "--out", str(out), "--model", str(tiny_model_dir),
                              "--laterality-k", "ten"])
    assert bad.exit_code == 2 and "laterality-k" in bad.output


def test_evaluate_record_sides_writes_the_measured_aurocs_into_a_model_directory(tiny_model_dir, sided_manifest,
                                                                                 tmp_path):
    import shutil

    from cxrtool.model.card import ModelCard
    from cxrtool.model.factory import DEFAULT_MODEL_DIR

    mine = tmp_path / "mine"
    shutil.copytree(tiny_model_dir, mine)
    res = runner.invoke(app, ["evaluate", str(sided_manifest), "--out", str(tmp_path / "eval"), "--model", str(mine),
                              "--bootstrap", "30", "--no-probe", "--json", "--record-sides"])
    assert res.exit_code == 0, res.output
    measured = json.loads(res.stdout)["laterality"]["labels"][0]["auroc_left_vs_right"]
    entry = ModelCard.load(mine).laterality["Pleural Effusion"]
    assert (entry["auroc"], entry["low"], entry["one_sided"]) == (round(measured["value"], 4),
                                                                 round(measured["low"], 4), 6)
    assert sided_manifest.name in entry["measured_on"]
    card_before = (DEFAULT_MODEL_DIR / "model.json").read_bytes()
    bundled = runner.invoke(app, ["evaluate", str(sided_manifest), "--out", str(tmp_path / "eval2"), "--model",
                                  str(DEFAULT_MODEL_DIR), "--no-probe", "--record-sides"])
    assert bundled.exit_code == 2 and "model directory of your own" in bundled.output
    assert (DEFAULT_MODEL_DIR / "model.json").read_bytes() == card_before


def test_evaluate_without_sides_has_no_laterality_section(tiny_model_dir, tmp_path):
    study = _study("x", "p1", "test", {}, {"Pleural Effusion": 1})
    study.images = [StudyImage(str(SAMPLE / "archive" / "nih" / p), "PA") for p in
                    ("00017714/study_006/00017714_006.jpg", "00000061/study_015/00000061_015.jpg")]
    other = _study("y", "p2", "test", {}, {"Pleural Effusion": 0})
    other.images = [StudyImage(str(SAMPLE / "archive" / "nih" / "00026451/study_068/00026451_068.jpg"), "PA")]
    path = write_manifest([study, other], tmp_path / "m.parquet")
    res = runner.invoke(app, ["evaluate", str(path), "--out", str(tmp_path / "e"), "--model", str(tiny_model_dir),
                              "--bootstrap", "10", "--no-probe", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["laterality"] is None


def _card_with(laterality: dict):
    from cxrtool.model.card import ImageSpec, ModelCard, TextSpec

    return ModelCard(image=ImageSpec(timm_name="x", feature_dim=8), text=TextSpec(feature_dim=8), embed_dim=8,
                     laterality=laterality)


def test_side_caveat_warns_only_for_a_sided_query_on_a_finding_the_model_was_measured_not_to_lateralise():
    from cxrtool.index.query import side_caveat

    card = _card_with({"Nodule": {"auroc": 0.34, "low": 0.19, "high": 0.48, "one_sided": 59, "measured_on": "cv"},
                       "Pleural Effusion": {"auroc": 0.75, "low": 0.66, "high": 0.84, "one_sided": 100},
                       "Pneumonia": {"auroc": 0.6, "low": 0.5, "high": 0.7}})
    note = side_caveat(card, "Left nodules")
    assert note and "nodule" in note and "0.34 [0.19, 0.48]" in note and "59 one-sided" in note and "(cv)" in note
    assert side_caveat(card, "right-sided pneumonia")  # an interval reaching 0.5 is not shown better than chance
    assert side_caveat(card, "left pleural effusion") is None  # measured, and clearly above chance
    assert side_caveat(card, "nodule") is None  # no side named
    assert side_caveat(card, "left pneumothorax") is None  # not measured: nothing to say
    assert side_caveat(card, "left nodule near the hilum, follow up") is None  # free text names no bank finding
    assert side_caveat(_card_with({}), "left nodule") is None


def test_record_in_card_writes_measured_sides_and_new_weights_drop_them(tiny_model, tiny_model_dir, tmp_path):
    import shutil

    import torch

    from cxrtool.evaluate.laterality import record_in_card
    from cxrtool.model import load_model, save_model_dir
    from cxrtool.model.card import ModelCard

    model_dir = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model_dir)
    report = {"labels": [{"label": "Nodule", "one_sided": 12, "auroc_left_vs_right":
                          {"value": 0.41, "low": 0.2, "high": 0.6, "resamples": 100}},
                         {"label": "Mass", "one_sided": 3, "auroc_left_vs_right": None}]}
    entries = record_in_card(model_dir, report, "unit test")
    assert entries == {"Nodule": {"auroc": 0.41, "low": 0.2, "high": 0.6, "one_sided": 12, "measured_on": "unit test"}}
    model = load_model(str(model_dir))
    assert model.card.laterality == entries
    assert save_model_dir(model, tmp_path / "same") and ModelCard.load(tmp_path / "same").laterality == entries
    with torch.no_grad():
        model.image_proj.weight.add_(0.01)  # fine-tuned: the measurement was of other weights
    save_model_dir(model, tmp_path / "tuned")
    assert ModelCard.load(tmp_path / "tuned").laterality == {}
    with pytest.raises(ModelError, match="laterality entry"):
        _card_with({"Nodule": {"auroc": "high"}}).validate()
