"""Index building and search: recall vs exact, pre-filters, incremental adds, model checks, the
search options (per study, near-duplicates) and the CLI outputs. Synthetic shards go through the
real shard writer and real FAISS; the CLI test embeds real sample images with the tiny model."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import write_shard
from cxrtool.errors import WorkspaceError
from cxrtool.index import Filters, Index, build_index, choose_index_kind
from cxrtool.index.kinds import estimate_bytes
from cxrtool.workspace import Workspace

from .conftest import SAMPLE
from .test_cli import cli

FP = "sha256:synthetic"
VIEWS = np.array(["PA", "AP", "LL", ""])


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors from a mixture of anisotropic clusters (uniform random data would make every
    approximate index look like brute force)."""
    if centres is None:
        centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, dim)) * np.linspace(0.2, 1.2, dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def rows_for(start: int, n: int, rng: np.random.Generator) -> list[dict]:
    return [{"id": 1_000_000 + i, "path": f"site-{'ab'[i % 2]}/p{i // 3}/img{i}.dcm", "study_key": f"st{i // 3}",
             "view": str(VIEWS[i % 4]), "modality": "CR" if i % 5 else "DX", "body_part": "CHEST",
             "study_date": f"20{10 + i % 12:02d}{1 + i % 12:02d}15", "patient_key": f"pt-{i % 50:04d}",
             "content_hash": f"h{i}", "rows": 1, "columns": 1} for i in range(start, start + n)]


def make_workspace(path, parts: list[tuple[int, int]], dim: int, seed: int = 0, fingerprint: str = FP):
    ws = Workspace(path)
    ws.shards.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(40, dim))
    all_vecs = []
    for n, (start, count) in enumerate(parts):
        vecs = clustered(count, dim, rng, centres)
        write_shard(ws.shards / f"shard-{n:05d}.parquet", rows_for(start, count, rng), vecs, fingerprint)
        all_vecs.append(vecs)
    return ws, np.concatenate(all_vecs), centres


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    sims = queries @ vectors.T
    if allowed is not None:
        sims[:, ~allowed] = -np.inf
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "ivfsq", "ivfpq"])
def test_recall_on_new_queries_meets_the_recorded_figure(tmp_path, kind):
    ws, vecs, centres = make_workspace(tmp_path / "ws", [(0, 8_000)], dim=32)
    info = build_index(ws.root, kind)
    assert info.kind == kind and info.recall_queries == 500 and info.recall_at_10 >= 0.9
    assert (info.nprobe > 0) == (kind != "hnsw") and (info.rerank > 0) == (kind in ("ivfsq", "ivfpq"))
    index = Index.open(ws.root)
    queries = clustered(300, 32, np.random.default_rng(7), centres)  # never added to the index
    _, pos = index.search_vectors(queries, 10)
    truth = exact_top(vecs, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)])
    assert recall >= info.recall_at_10 - 0.03, (recall, info.recall_at_10)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_filters_never_return_a_non_matching_row(tmp_path, kind):
    ws, vecs, centres = make_workspace(tmp_path / "ws", [(0, 12_000), (12_000, 14_000)], dim=32)
    build_index(ws.root, kind)
    index = Index.open(ws.root)
    table = index.store.table.to_pylist()
    queries = clustered(20, 32, np.random.default_rng(3), centres)
    cases = [Filters(views=("pa",)), Filters(views="PA,AP", modalities=("DX",)),
             Filters(date_from="2015-01", date_to="2017-12-31"), Filters(patient_keys=("pt-0007", "pt-0011")),
             Filters(path_glob="site-b/p1*"), Filters(views=("LL",), path_glob="site-a/*", date_to="2012")]
    for filters in cases:
        allowed = filters.mask(index.store.table)
        assert 0 < allowed.sum() < len(allowed)
        exact_path = allowed.sum() <= 20_000
        scores, pos = index.search_vectors(queries, 10, filters)
        for row in pos.ravel():
            assert row >= 0 and allowed[row], (filters, table[row])
        truth = exact_top(vecs, queries, 10, allowed)
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos, truth, strict=True)])
        assert overlap == 1.0 if (exact_path or kind == "flat") else overlap >= 0.9, (filters, overlap)
        hits = index.search(vector=queries[0], k=10, filters=filters, per_study=True)
        assert hits and all(allowed[index.store.positions(np.array([h.id]))[0]] for h in hits)


def test_filter_values_are_checked():
    with pytest.raises(WorkspaceError, match="not a date"):
        Filters(date_from="last week")
    assert Filters(views="pa, ap").views == ("pa", "ap") and Filters().is_empty()


def test_ids_map_to_the_right_rows_after_incremental_adds(tmp_path):
    ws, _, _ = make_workspace(tmp_path / "ws", [(0, 3_000)], dim=32)
    first = build_index(ws.root, "ivf")
    rng = np.random.default_rng(5)
    extra = clustered(1_500, 32, rng)
    write_shard(ws.shards / "shard-00001.parquet", rows_for(50_000, 1_500, rng), extra, FP)
    second = build_index(ws.root)
    assert second.incremental_adds == 1 and second.parts == [0, 1] and second.count == 4_500
    assert second.factory == first.factory and second.recall_at_10 > 0.8
    index = Index.open(ws.root)
    for i in (0, 700, 1_499):
        hit = index.search(vector=extra[i], k=1, dedupe=None)[0]
        assert hit.id == 1_050_000 + i and hit.path.endswith(f"/img{50_000 + i}.dcm") and hit.score > 0.999
    # a shard rewritten in place: the index is rebuilt from scratch, not added to
    write_shard(ws.shards / "shard-00001.parquet", rows_for(60_000, 10, rng), extra[:10], FP)
    third = build_index(ws.root)
    assert third.incremental_adds == 0 and third.count == 3_010 and third.parts == [0]
    # an id already in the index cannot be added again
    write_shard(ws.shards / "shard-00002.parquet", rows_for(0, 5, rng), extra[:5], FP)
    with pytest.raises(WorkspaceError, match="already indexed"):
        build_index(ws.root)


def test_vectors_of_another_model_are_refused(tmp_path, tiny_model, capfd):
    ws, _, _ = make_workspace(tmp_path / "ws", [(0, 500)], dim=32)
    write_shard(ws.shards / "shard-00001.parquet", rows_for(9_000, 5, np.random.default_rng(1)),
                clustered(5, 32, np.random.default_rng(1)), "sha256:another-model")
    info = build_index(ws.root)  # a stray shard of another model does not verify: it is left out, with a note
    assert info.count == 500 and set(info.shards) == {"shard-00000.parquet"}
    assert "another model" in capfd.readouterr().err
    index = Index.open(ws.root, model=tiny_model)
    with pytest.raises(WorkspaceError, match="another model"):
        index.search("pleural effusion")


def test_per_study_collapse_and_near_duplicates(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.shards.mkdir(parents=True)
    q = np.eye(8, dtype=np.float32)[0]
    base = np.eye(8, dtype=np.float32)
    vecs = np.stack([q + base[1] * 0.10, q + base[1] * 0.12 + base[2] * 0.02, q + base[1] * 0.14,
                     q * 0.9 + base[4] * 0.43, q * 0.9 + base[4] * 0.43, q * 0.5 + base[5] * 0.86])
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    rows = [{"id": i, "path": f"img{i}.png", "study_key": s, "content_hash": h, "rows": 1, "columns": 1}
            for i, (s, h) in enumerate(zip("AAABCD", ["a", "b", "c", "d", "d", "e"], strict=True))]
    write_shard(ws.shards / "shard-00000.parquet", rows, vecs, FP)
    build_index(ws.root)
    index = Index.open(ws.root)
    ranked = [h.id for h in index.search(vector=q, k=6, dedupe=None)]
    assert ranked[:3] == [0, 1, 2] and set(ranked[3:5]) == {3, 4} and ranked[5] == 5
    shown = [h.id for h in index.search(vector=q, k=6)]  # 1, 2 ≈ 0 (cos > 0.98); 3 and 4: one file
    assert shown[0] == 0 and shown[1] in (3, 4) and shown[2] == 5 and len(shown) == 3
    studies = index.search(vector=q, k=3, per_study=True, dedupe=None)
    assert [(h.study_key, h.views_in_study) for h in studies][0] == ("A", 3)
    assert {(h.study_key, h.views_in_study) for h in studies[1:]} == {("B", 1), ("C", 1)}  # tied scores


def test_memory_budget_moves_to_a_smaller_index():
    assert choose_index_kind(5_000, 512) == "flat"
    assert choose_index_kind(50_000, 512, memory_budget=1 << 40) == "hnsw"
    small = estimate_bytes("ivfsq", 50_000, 512) - 1
    assert choose_index_kind(50_000, 512, memory_budget=small) == "ivfpq"
    assert choose_index_kind(2_000_000, 512, memory_budget=1 << 40) == "ivfsq"
    assert choose_index_kind(2_000_000, 512, memory_budget=1 << 30) == "ivfsq"  # 8-bit codes: 1.04 GB
    assert choose_index_kind(2_000_000, 512, memory_budget=1 << 29) == "ivfpq"


def test_cli_filters_outputs_and_contact_sheet(tmp_path, tiny_model, tiny_model_dir):
    archive = tmp_path / "archive"
    for rel in ["pacs/PAT0001", "pacs/PAT0002", "hannover/case01"]:
        shutil.copytree(SAMPLE / "archive" / rel, archive / rel)
    ws = tmp_path / "ws"
    embed_archive(archive, ws, tiny_model, workers=0, progress=False)
    info = build_index(ws, model=tiny_model)  # the index CLI is run end to end in test_cli
    assert info.kind == "flat" and info.count == len(list(archive.rglob("*.png"))) + 2
    common = ["--workspace", str(ws), "--model", str(tiny_model_dir), "--dedupe", "0"]
    hits = json.loads(cli("search", "effusion", "--view", "PA", "-k", "20", "--json", *common).stdout)
    assert hits and all(h["view"] == "PA" for h in hits)
    rows = list(csv.DictReader(io.StringIO(cli("search", "effusion", "--path", "hannover/*", "--csv",
                                               *common).stdout)))
    assert rows and all(r["path"].startswith("hannover/") for r in rows)
    grid = tmp_path / "grid.png"
    out = cli("search", "effusion", "--per-study", "--save-grid", str(grid), *common).stdout
    assert "studies" in out and grid.stat().st_size > 10_000
    none = cli("search", "effusion", "--modality", "MR", *common).stdout
    assert "no results" in none


def test_text_queries_get_their_own_tuned_depth(tmp_path, tiny_model):
    dim = tiny_model.card.embed_dim
    ws, _, _ = make_workspace(tmp_path / "ws", [(0, 4_000)], dim=dim, fingerprint=tiny_model.card.vector_id)
    info = build_index(ws.root, "ivf", model=tiny_model)
    assert info.text_queries > 50 and info.text_recall_at_10 is not None and info.text_nprobe >= info.nprobe
    other = build_index(ws.root, "ivf", rebuild=True)  # no matching model at hand: the 4x rule
    assert other.text_queries == 0 and other.text_recall_at_10 is None and other.text_nprobe >= other.nprobe
    hits = Index.open(ws.root, model=tiny_model).search("pleural effusion", k=5, dedupe=None)
    assert len(hits) == 5


def test_a_query_naming_a_finding_searches_with_the_banks_sentences(tmp_path, tiny_model):
    from cxrtool.data.prompts import PromptBank
    from cxrtool.data.sides import swap_sides

    dim = tiny_model.card.embed_dim
    ws, _, _ = make_workspace(tmp_path / "ws", [(0, 2_000)], dim=dim, fingerprint=tiny_model.card.vector_id)
    build_index(ws.root, "flat")
    index = Index.open(ws.root, model=tiny_model)
    expanded = index.embed_query("left pleural effusion")
    sentences = PromptBank.load().expand_query("left pleural effusion")
    left = tiny_model.encode_ensemble(sentences)
    right = tiny_model.encode_ensemble([swap_sides(t) for t in sentences])
    assert "right" in " ".join(swap_sides(t) for t in sentences) and "right" not in " ".join(sentences)
    contrasted = 2 * left - right  # the named side's sentences, pushed away from the other side's
    assert np.allclose(expanded, contrasted / np.linalg.norm(contrasted), atol=1e-5)
    unsided = index.embed_query("pleural effusion")
    assert np.allclose(unsided, tiny_model.encode_ensemble(PromptBank.load().expand_query("pleural effusion")),
                       atol=1e-6)
    typed = index.embed_query("left pleural effusion", expand=False)
    assert np.allclose(typed, tiny_model.encode_texts(["left pleural effusion"])[0], atol=1e-6)
    assert not np.allclose(expanded, typed, atol=1e-3)
    a = [h.id for h in index.search("left pleural effusion", k=10, dedupe=None)]
    b = [h.id for h in index.search(vector=expanded[None], k=10, dedupe=None, text=True)]
    assert a == b
    sentence = "a small left apical pneumothorax is seen"  # not a finding's name: used as typed
    assert np.allclose(index.embed_query(sentence), tiny_model.encode_texts([sentence])[0], atol=1e-6)


def test_the_side_contrast_moves_sides_up_the_ranking_but_keeps_their_order(tiny_model):
    from cxrtool.data.prompts import PromptBank
    from cxrtool.index.query import text_query_vector

    bank = PromptBank.load()
    assert bank.query_side("Left-sided pneumothorax") == "left" and bank.query_side("pneumothorax") is None
    rng = np.random.default_rng(0)
    images = rng.normal(size=(200, tiny_model.card.output_dim)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    vl = tiny_model.encode_ensemble(bank.expand_query("left pneumothorax"))
    vr = tiny_model.encode_ensemble(bank.expand_query("right pneumothorax"))
    ql = text_query_vector(tiny_model, "left pneumothorax", bank)
    qr = text_query_vector(tiny_model, "right pneumothorax", bank)
    plain, searched = images @ (vl - vr), images @ ql - images @ qr
    # the left-minus-right score is the plain ensemble difference times a positive constant
    scale = float(searched @ plain / (plain @ plain))
    assert scale > 1 and np.allclose(searched, scale * plain, atol=1e-5)


def test_a_stale_index_opened_by_model_name_loads_the_model_once(tmp_path, tiny_model_dir, monkeypatch, capfd):
    """Search never rebuilds: a stale index answers for what it holds, says what to run, and a
    model given by name is loaded once, on the first query; that load exports its text side, so a
    later search's text queries load no model at all (cxrtool.model.onnx_text)."""
    import cxrtool.model

    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path / "cache"))  # no text export yet

    fingerprint = cxrtool.model.peek_vector_id(str(tiny_model_dir))
    ws, _, _ = make_workspace(tmp_path / "ws", [(0, 2_000)], dim=32, fingerprint=fingerprint)
    build_index(ws.root, "hnsw")
    write_shard(ws.shards / "shard-00001.parquet", rows_for(9_000, 50, np.random.default_rng(1)),
                clustered(50, 32, np.random.default_rng(1)), fingerprint)  # the index is stale now
    loads = []
    real = cxrtool.model.load_model
    monkeypatch.setattr(cxrtool.model, "load_model", lambda *a, **kw: loads.append(a) or real(*a, **kw))
    index = Index.open(ws.root, model=str(tiny_model_dir))
    assert index.info.count == 2_000 and not loads  # not rebuilt; the model is not needed yet
    assert "run `cxrtool index` to bring it up to date" in capfd.readouterr().err
    assert len(index.search("pleural effusion", k=3)) == 3
    assert len(index.search("cardiomegaly", k=3)) == 3
    assert len(loads) == 1
    again = Index.open(ws.root, model=str(tiny_model_dir))
    for query in ("pleural effusion", "small left apical pneumothorax"):
        assert [h.id for h in again.search(query, k=3)] == [h.id for h in index.search(query, k=3)]
    assert len(loads) == 1  # the second index answered text queries from the export and the query cache
    assert build_index(ws.root, model=str(tiny_model_dir)).count == 2_050


def test_tuning_bound_is_a_one_sided_95_percent_lower_bound():
    """The depth rule's bound agrees with the normal approximation mean - 1.645 * sd / sqrt(n) on
    a realistic spread of per-query recalls, sits below a mean that just reaches the target, and
    is the mean itself when every query agrees."""
    from cxrtool.index.tuning import lower_bound

    per_query = np.random.default_rng(3).choice([1.0, 0.9, 0.8, 0.5], size=300, p=[0.8, 0.12, 0.06, 0.02])
    normal = per_query.mean() - 1.645 * per_query.std(ddof=1) / np.sqrt(len(per_query))
    assert abs(lower_bound(per_query) - normal) < 0.004, (lower_bound(per_query), normal)
    assert lower_bound(per_query) < per_query.mean()
    assert lower_bound(np.ones(40)) == 1.0 and lower_bound(np.full(5, 0.7)) == 0.7
