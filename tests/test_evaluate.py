"""Evaluation: metrics against scikit-learn or hand-computed fixtures, seeded bootstrap CIs, the 5x200
prompt grid, and `cxrtool classify` / `cxrtool evaluate` end to end with the tiny model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score, top_k_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.data.manifest import Study, StudyImage, write_manifest
from cxrtool.evaluate.bootstrap import bootstrap_ci
from cxrtool.evaluate.classification import auroc, binary_report, known, multiclass_report
from cxrtool.evaluate.probe import C_GRID, linear_probe, patient_subsample
from cxrtool.evaluate.prompt_grid import expand_grid, load_prompt_grid
from cxrtool.evaluate.retrieval import (
    dedupe_texts,
    image_to_text_ranks,
    rank_summary,
    text_to_image_ranks,
)
from cxrtool.evaluate.subgroups import age_band, subgroup_report
from cxrtool.evaluate.zero_shot import ZeroShotClassifier, label_prompt_sets, multiclass_scores

from .conftest import SAMPLE

runner = CliRunner()


@pytest.fixture
def scored():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    return y, y * 0.8 + rng.normal(0, 0.7, 200)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ------------------------------------------------------------------ classification metrics
def test_auroc_equals_sklearn(scored):
    y, s = scored
    assert auroc(s, y) == pytest.approx(roc_auc_score(y, s))


def test_auroc_is_nan_with_one_class():
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_auroc_hand_computed_with_a_tie():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs won 1+1+0.5(tie)+1 = 3.5 of 4
    assert auroc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)


def test_binary_report_accuracy_and_f1_equal_sklearn_at_the_threshold(scored):
    y, s = scored
    p = 1 / (1 + np.exp(-s))
    row = binary_report(y, p, threshold=0.6, n_resamples=20)
    pred = (p >= 0.6).astype(int)
    assert row["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-4)
    assert row["f1"] == pytest.approx(f1_score(y, pred), abs=1e-4)
    assert row["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)


def test_uncertain_and_unmentioned_labels_are_left_out_of_scoring():
    y = np.array([1, 0, -1, np.nan, 1, 0])
    s = np.array([0.9, 0.1, 0.0, 0.0, 0.8, 0.2])
    assert known(y).tolist() == [True, True, False, False, True, True]
    row = binary_report(y, s, n_resamples=10)
    assert row["n"] == 4 and row["positives"] == 2 and row["auroc"]["value"] == 1.0


def test_multiclass_accuracy_equals_sklearn():
    rng = np.random.default_rng(0)
    y, scores = rng.integers(0, 5, 100), rng.normal(size=(100, 5))
    rep = multiclass_report(y, scores, list("abcde"), n_resamples=20)
    assert rep["accuracy"]["value"] == pytest.approx(accuracy_score(y, scores.argmax(1)), abs=1e-4)
    assert sum(rep["classes"].values()) == 100


# ------------------------------------------------------------------ bootstrap
def test_bootstrap_interval_contains_the_point_estimate(scored):
    y, s = scored
    ci = bootstrap_ci(roc_auc_score, y, s, n_resamples=1000, seed=3)
    assert ci.low <= ci.value <= ci.high and ci.high - ci.low < 0.3 and ci.resamples == 1000


def test_bootstrap_is_reproducible_with_a_seed(scored):
    y, s = scored
    groups = np.arange(len(y)) // 2
    a = bootstrap_ci(roc_auc_score, y, s, groups=groups, n_resamples=200, seed=7)
    b = bootstrap_ci(roc_auc_score, y, s, groups=groups, n_resamples=200, seed=7)
    c = bootstrap_ci(roc_auc_score, y, s, groups=groups, n_resamples=200, seed=8)
    assert a == b and (a.low, a.high) != (c.low, c.high)


def test_bootstrap_by_patient_draws_whole_patients():
    groups = np.repeat(np.arange(10), 2)  # every patient has exactly two images

    def whole_patients(g):
        return float(all(n % 2 == 0 for n in np.unique(g, return_counts=True)[1]))

    ci = bootstrap_ci(whole_patients, groups, groups=groups, n_resamples=100, seed=0)
    assert ci.low == ci.high == 1.0


def test_bootstrap_skips_resamples_where_the_metric_is_undefined():
    y, s = np.array([1, 0, 0, 0, 0, 0]), np.linspace(1, 0, 6)
    ci = bootstrap_ci(roc_auc_score, y, s, n_resamples=200, seed=0)
    assert 0 < ci.resamples < 200  # resamples without the one positive have no AUROC


# ------------------------------------------------------------------ prompt grid
def test_grid_expands_to_the_documented_sizes():
    grid = load_prompt_grid()
    assert {k: len(v) for k, v in grid.items()} == {"Atelectasis": 210, "Cardiomegaly": 15, "Consolidation": 192,
                                                     "Edema": 18, "Pleural Effusion": 54}
    assert all(len(set(v)) == len(v) for v in grid.values())


def test_grid_order_is_severity_subtype_location_with_empty_phrases_skipped():
    at = load_prompt_grid()["Atelectasis"]
    assert at[:2] == ["subsegmental atelectasis at the mid lung zone",
                      "subsegmental atelectasis at the upper lung zone"]
    assert at[70] == "mild subsegmental atelectasis at the mid lung zone"
    assert load_prompt_grid()["Pleural Effusion"][0] == "left pleural effusion"  # its own order: severity, location


def test_grid_expansion_is_a_product_without_duplicates():
    spec = {"severity": ["", "mild"], "subtype": ["edema", "edema"], "location": ["", "at the bases"]}
    assert expand_grid(spec) == ["edema", "edema at the bases", "mild edema", "mild edema at the bases"]
    assert expand_grid({**spec, "order": ["location", "subtype"]}) == ["edema", "at the bases edema"]


# ------------------------------------------------------------------ zero-shot
def test_zero_shot_probability_is_the_softmax_over_negative_and_positive():
    rng = np.random.default_rng(0)
    pos, neg, img = unit(rng.normal(size=(3, 8))), unit(rng.normal(size=(3, 8))), unit(rng.normal(size=(5, 8)))
    clf = ZeroShotClassifier(["a", "b", "c"], pos, neg, scale=20.0)
    logits = 20.0 * np.stack([img @ neg.T, img @ pos.T], axis=-1)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(clf.probabilities(img), softmax[..., 1], rtol=1e-5)


def test_multiclass_scores_are_mean_cosines():
    img = unit(np.array([[1.0, 0.0], [0.0, 1.0]]))
    classes = [unit(np.array([[1.0, 0.0], [0.6, 0.8]])), unit(np.array([[0.0, 1.0]]))]
    np.testing.assert_allclose(multiclass_scores(img, classes), [[0.8, 0.0], [0.4, 1.0]], atol=1e-6)


def test_label_names_go_through_synonyms_and_no_finding_is_never_negated_by_prefix():
    sets = {s.label: s for s in label_prompt_sets(["effusion", "No Finding"])}
    assert set(sets) == {"Pleural Effusion", "No Finding"}
    neg = sets["No Finding"].negative
    assert neg and not any("no finding" in s.lower() for s in neg)
    assert "the lungs are clear." not in neg


def test_custom_prompts_replace_the_bank_sentences():
    sets = label_prompt_sets(custom={"Widget": {"positive": ["a widget."], "negative": ["no widget."]}})
    assert [(s.label, s.positive, s.negative) for s in sets] == [("Widget", ("a widget.",), ("no widget.",))]


# ------------------------------------------------------------------ retrieval
def test_retrieval_ranks_hand_computed_with_duplicate_texts():
    texts = ["effusion.", "clear.", "effusion.", " effusion. "]
    unique, ids = dedupe_texts(texts)
    assert unique == ["effusion.", "clear."] and ids.tolist() == [0, 1, 0, 0]
    t = np.array([[1.0, 0.0], [0.0, 1.0]])
    img = unit(np.array([[1.0, 0.1], [1.0, 0.2], [0.1, 1.0], [0.3, 1.0]]))
    assert image_to_text_ranks(img, t, ids).tolist() == [1, 2, 2, 2]
    # 'effusion.' best match is image 0 (rank 1); 'clear.' best is image 1 but images 2, 3 (wrong) score higher
    assert text_to_image_ranks(img, t, ids).tolist() == [1, 3]
    summary = rank_summary(np.array([1, 2, 2, 1]), ks=(1, 5))
    assert summary == {"recall@1": 0.5, "recall@5": 1.0, "mean_rank": 1.5, "median_rank": 1.5, "queries": 4}


def test_image_to_text_recall_equals_sklearn_top_k_accuracy():
    rng = np.random.default_rng(0)
    img, txt = unit(rng.normal(size=(60, 16))), unit(rng.normal(size=(20, 16)))
    ids = rng.integers(0, 20, 60)
    ranks = image_to_text_ranks(img, txt, ids)
    for k in (1, 5, 10):
        assert (ranks <= k).mean() == pytest.approx(top_k_accuracy_score(ids, img @ txt.T, k=k, labels=range(20)))


# ------------------------------------------------------------------ probe, subgroups
def test_patient_subsample_takes_whole_patients():
    groups = np.repeat(np.arange(100), 3)
    idx = patient_subsample(groups, 0.1, seed=0)
    assert len(idx) == 30 and len(set(groups[idx])) == 10
    assert patient_subsample(groups, 0.1, seed=0).tolist() == idx.tolist()


def test_linear_probe_auroc_equals_a_plain_sklearn_fit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = (x[:, 0] + rng.normal(0, 0.5, 120) > 0).astype(float)
    groups = np.arange(120)
    rows = linear_probe(x[:80], {"a": y[:80]}, groups[:80], x[80:], {"a": y[80:]}, fractions=(1.0, 0.01))
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    ref = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=list(C_GRID), cv=folds, scoring="roc_auc",
                                                               max_iter=2000, random_state=0)).fit(x[:80], y[:80])
    assert rows[0]["auroc"] == pytest.approx(roc_auc_score(y[80:], ref.predict_proba(x[80:])[:, 1]), abs=1e-4)
    assert ref[-1].C_[0] in C_GRID
    assert rows[1]["train_images"] == 1 and rows[1]["auroc"] is None and "skipped" in rows[1]


def test_subgroup_auroc_equals_auroc_on_the_group():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40).astype(float)
    prob = (y * 0.5 + rng.random(40))[:, None]
    sex = ["M"] * 20 + ["F"] * 20
    rows = subgroup_report(prob, {"x": y}, ["x"], {"sex": sex, "age_band": [""] * 40})
    assert [r["group"] for r in rows] == ["F", "M"]
    assert rows[1]["auroc"]["x"] == pytest.approx(roc_auc_score(y[:20], prob[:20, 0]), abs=1e-4)
    assert (age_band("39"), age_band("40"), age_band("85"), age_band("?")) == ("<40", "40-59", "80+", "")


# ------------------------------------------------------------------ CLI end to end (tiny model)
def _sample_rows(n: int = 16) -> list[dict]:
    with open(SAMPLE / "labels.csv", newline="") as fh:
        return list(csv.DictReader(fh))[:n]


def test_classify_cli_gives_probabilities_per_image(tiny_model_dir, tmp_path):
    rows = _sample_rows(3)
    files = [str(SAMPLE / "archive" / r["path"]) for r in rows]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    res = runner.invoke(app, ["classify", *files, str(tmp_path), "--model", str(tiny_model_dir), "--labels",
                              "effusion,cardiomegaly", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["labels"] == ["Pleural Effusion", "Cardiomegaly"]
    assert [i["path"] for i in data["images"]] == files
    assert all(0 <= i[k] <= 1 for i in data["images"] for k in data["labels"])
    assert [e["path"].endswith("broken.png") for e in data["errors"]] == [True]
    res = runner.invoke(app, ["classify", files[0], "--model", str(tiny_model_dir), "--csv"])
    assert res.exit_code == 0 and res.stdout.splitlines()[0].startswith("path,No Finding,Atelectasis")


def test_classify_cli_refuses_a_bad_prompts_file(tiny_model_dir, tmp_path):
    (tmp_path / "p.json").write_text('{"labels": {"Edema": {"negative": ["no edema."]}}}')
    res = runner.invoke(app, ["classify", str(SAMPLE / "archive"), "--model", str(tiny_model_dir),
                              "--prompts", str(tmp_path / "p.json")])
    assert res.exit_code == 2 and "positive" in res.output


@pytest.fixture
def small_manifest(tmp_path):
    studies = []
    for r in _sample_rows(16):
        labels = {k: int(r[k]) for k in ("cardiomegaly", "effusion", "atelectasis", "no_finding")}
        split = "test" if int(r["patient_id"]) % 2 else "train"
        studies.append(Study(r["path"], r["patient_id"], split, "nih", [StudyImage(str(SAMPLE / "archive" / r["path"]),
                             r["view"])], labels=labels, text=r["findings"].replace("|", ", ").lower()))
    return write_manifest(studies, tmp_path / "manifest.parquet")


def test_evaluate_cli_writes_every_output_and_reuses_its_cache(tiny_model_dir, small_manifest, tmp_path):
    out = tmp_path / "eval"
    args = ["evaluate", str(small_manifest), "--out", str(out), "--model", str(tiny_model_dir), "--bootstrap", "50",
            "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {"zero_shot", "multiclass", "retrieval", "linear_probe", "subgroups"} <= set(summary)
    assert summary["data"]["split"] == "test" and summary["settings"]["bootstrap_resamples"] == 50
    for row in summary["zero_shot"]["labels"]:
        if row["auroc"]:
            assert row["auroc"]["low"] <= row["auroc"]["value"] <= row["auroc"]["high"]
    assert set(summary["retrieval"]) >= {"image_to_text", "text_to_image", "unique_texts"}
    assert [float(f) for f in summary["linear_probe"]["by_fraction"]] == [0.01, 0.1, 1.0]
    assert {r["attribute"] for r in summary["subgroups"]} == {"view"}
    for name in ("summary.json", "report.md", "predictions.csv", "roc.png", "recall_at_k.png"):
        assert (out / name).stat().st_size > 0
    assert "| label | n | positives | AUROC [95% CI]" in (out / "report.md").read_text()
    (cache_file,) = (out / "cache").glob("image-vectors-*.npz")
    written = cache_file.stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert json.loads(again.stdout)["zero_shot"] == summary["zero_shot"]  # seeded: identical figures
    assert cache_file.stat().st_mtime_ns == written  # every vector came from the cache: nothing re-embedded


def test_evaluate_reads_shards_with_a_labels_csv(tiny_model, tiny_model_dir, tmp_path):
    from cxrtool.embed.shards import image_id, write_shard
    from cxrtool.model import load_model_dir

    model = load_model_dir(tiny_model_dir)
    rows = _sample_rows(12)
    vecs = model.encode_images([SAMPLE / "archive" / r["path"] for r in rows])
    (tmp_path / "ws" / "shards").mkdir(parents=True)
    write_shard(tmp_path / "ws" / "shards" / "shard-00000.parquet",
                [{"id": image_id(r["path"]), "path": r["path"], "view": r["view"]} for r in rows], vecs,
                model.card.vector_id)
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id", "sex", "age", "effusion", "no_finding"])
        for i, r in enumerate(rows):
            w.writerow([r["path"], r["patient_id"], "MF"[i % 2], 30 + 5 * i, r["effusion"], r["no_finding"]])
    res = runner.invoke(app, ["evaluate", "--shards", str(tmp_path / "ws"), "--labels-csv",
                              str(tmp_path / "labels.csv"), "--out", str(tmp_path / "eval"), "--model",
                              str(tiny_model_dir), "--bootstrap", "20", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["data"]["images"] == 12 and summary["linear_probe"] is None
    assert {r["label"] for r in summary["zero_shot"]["labels"]} <= {"Pleural Effusion", "No Finding"}
    res = runner.invoke(app, ["classify", str(tmp_path / "ws"), "--model", str(tiny_model_dir), "--labels", "edema",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(i["path"] for i in json.loads(res.stdout)["images"]) == sorted(r["path"] for r in rows)


def test_evaluate_cli_needs_a_manifest_or_shards():
    res = runner.invoke(app, ["evaluate"])
    assert res.exit_code == 2 and "MANIFEST" in res.output


def test_run_evaluation_is_the_chain_the_cli_and_the_scripts_share(tiny_model_dir, small_manifest, tmp_path):
    """The library call the scripts make gives the command's figures; without out_dir it writes only its cache."""
    from cxrtool.errors import ManifestError
    from cxrtool.evaluate import EvalOptions, run_evaluation
    from cxrtool.model import load_model

    options = EvalOptions(n_resamples=30, probe_fractions=())
    ev = run_evaluation(small_manifest, model=str(tiny_model_dir), options=options, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "manifest.parquet"] and ev.outputs == {}
    assert set(ev.eval_set.splits) == {"test"} and len(ev.eval_set) == ev.summary["data"]["images"]
    assert ev.eval_set.vectors.shape[0] == len(ev.eval_set) and ev.eval_set.vector_id == ev.model.card.vector_id
    again = run_evaluation(small_manifest, model=load_model(str(tiny_model_dir)), options=options)
    assert again.summary["zero_shot"] == ev.summary["zero_shot"]
    res = runner.invoke(app, ["evaluate", str(small_manifest), "-o", str(tmp_path / "out"), "--model",
                              str(tiny_model_dir), "--bootstrap", "30", "--no-probe", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["zero_shot"] == ev.summary["zero_shot"]
    with pytest.raises(ManifestError, match="MANIFEST"):
        run_evaluation(small_manifest, shards=tmp_path)
