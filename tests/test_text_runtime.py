"""Text queries without torch: the text side on ONNX Runtime + tokenizers, checked against torch on
the prompt bank's real report sentences, and the on-disk query-vector cache.

(The end-to-end proof, a `cxrtool search` whose process cannot import torch, is in test_cli.py, on
the bundled model's demo workspace.)
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cxrtool.data.prompts import PromptBank
from cxrtool.data.sides import swap_sides
from cxrtool.model import load_model_dir
from cxrtool.model import onnx_text as ot
from cxrtool.model.onnx_export import MIN_COSINE, min_cosine
from cxrtool.model.text_cache import CachedText, cache_file


def _sentences() -> list[str]:
    bank = PromptBank.load()
    texts = sorted({t for p in bank.labels.values() for t in (*p.positive, *p.uncertain, *p.negative)})
    return texts + [swap_sides(t) for t in texts if swap_sides(t) != t] + ot.check_texts()[:7]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    """The tiny model as loaded from its directory (a fingerprint: what exports are keyed by)."""
    loaded = load_model_dir(tiny_model_dir)
    assert loaded.card.embedding == "single"
    return loaded


@pytest.fixture(scope="module")
def onnx(model):
    assert ot.export_text(model) == ""
    runner = ot.OnnxText.open(model.card)
    assert runner is not None
    return runner


def test_onnx_text_gives_torchs_vectors_on_real_sentences(model, onnx):
    texts = _sentences()
    assert len(texts) > 150
    want = model.encode_texts(texts)
    got = onnx.encode_texts(texts, batch_size=32)  # padded batches of mixed lengths
    assert got.shape == want.shape
    assert min_cosine(got, want) >= MIN_COSINE
    one_by_one = np.concatenate([onnx.encode_texts([t]) for t in texts[:20]])  # no padding at all
    assert min_cosine(one_by_one, want[:20]) >= MIN_COSINE


def test_the_exported_tokenizer_splits_as_the_models(model, onnx):
    texts = _sentences()
    ids, mask = onnx.tokens(texts)
    want = model.tokenize(texts)
    assert np.array_equal(ids, want["input_ids"].numpy())
    assert np.array_equal(mask, want["attention_mask"].numpy())
    assert ids.shape[1] == model.card.text.max_length  # the over-long check text is cut where the model cuts it


def test_flip_pair_texts_are_paired_the_same_way_by_both_engines(model, onnx):
    pair_card = copy.deepcopy(model.card)
    pair_card.embedding = "flip_pair"
    paired_model, paired_onnx = copy.copy(model), copy.copy(onnx)
    paired_model.card, paired_onnx.card = pair_card, pair_card
    texts = ["left pleural effusion", "cardiomegaly", "right apical pneumothorax"]
    got, want = paired_onnx.encode_texts(texts), paired_model.encode_texts(texts)
    assert got.shape == (3, 2 * model.card.embed_dim)
    assert min_cosine(got, want) >= MIN_COSINE
    # a sentence that names no side is its own mirror: both halves equal
    assert np.allclose(got[1, : model.card.embed_dim], got[1, model.card.embed_dim :])


def test_models_that_clean_texts_are_not_exported(model, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))

    class Cleaning(type(model)):
        def clean(self, text: str) -> str:
            return text.rstrip(".")

    cleaning = copy.copy(model)
    cleaning.__class__ = Cleaning
    assert "cleans texts" in ot.export_text(cleaning)
    assert not ot.export_files(model.card)[2].exists()  # not a refusal of the export: nothing to retry


def test_an_export_that_disagrees_is_refused_once_and_not_retried(model, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))
    monkeypatch.setattr(ot, "parity", lambda got, ref, what: f"vectors differ on {what}")
    why = ot.export_text(model)
    assert why.startswith("vectors differ")
    graph, tok, refused = ot.export_files(model.card)
    assert refused.is_file() and not graph.exists() and not tok.exists()
    assert ot.OnnxText.open(model.card) is None

    def boom(*a, **k):
        raise AssertionError("a refused export was tried again")

    monkeypatch.setattr(ot, "export_module", boom)
    assert ot.export_text(model) == why
    assert not list(tmp_path.rglob(".text-*"))  # no temp files left behind


def test_a_corrupt_cached_export_is_removed_and_torch_used(model, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))
    graph, tok, _ = ot.export_files(model.card)
    graph.parent.mkdir(parents=True)
    graph.write_bytes(b"not an onnx graph")
    tok.write_text("{}")
    assert ot.OnnxText.open(model.card) is None
    assert not graph.exists()
    assert ot.export_text(model) == ""  # made afresh
    assert ot.OnnxText.open(model.card) is not None


class Counting:
    """A text side that counts what it is asked to encode."""

    def __init__(self, inner) -> None:
        self.inner, self.encoded = inner, []

    def _encode_texts(self, texts, batch_size):
        self.encoded += texts
        return self.inner._encode_texts(texts, batch_size)


def test_the_query_cache_answers_repeats_without_the_text_tower(model, onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))
    counting = Counting(onnx)
    first = CachedText(model.card, lambda: counting)
    texts = ["left pleural effusion", "right pleural effusion", "left pleural effusion"]
    a = first.encode_texts(texts)
    assert counting.encoded == ["left pleural effusion", "right pleural effusion"]  # a repeat is encoded once
    assert min_cosine(a, model.encode_texts(texts)) >= MIN_COSINE

    loads = []
    second = CachedText(model.card, lambda: loads.append(1) or counting)  # a new process, as it were
    b = second.encode_texts(texts[:2])
    assert not loads and np.array_equal(a[:2], b)  # answered from disk: the tower was never started
    raw = cache_file(model.card.vector_tag).read_bytes()
    assert b"effusion" not in raw and "effusion".encode("utf-32-le") not in raw  # no query text on disk


def test_a_torn_or_foreign_cache_file_is_ignored_and_replaced(model, onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))
    path = cache_file(model.card.vector_tag)
    path.parent.mkdir(parents=True)
    for junk in (b"PK\x03\x04 torn", b""):
        path.write_bytes(junk)
        v = CachedText(model.card, lambda: onnx).encode_texts(["cardiomegaly"])
        assert min_cosine(v, model.encode_texts(["cardiomegaly"])) >= MIN_COSINE
    np.savez(path, keys=np.array(["x"]), vectors=np.zeros((1, 3), np.float32))  # another width: not used
    cache = CachedText(model.card, lambda: onnx)
    assert len(cache.keys) == 0
    cache.encode_texts(["cardiomegaly"])
    with np.load(path, allow_pickle=False) as data:  # what was written last reads back
        assert data["vectors"].shape[1] == model.card.embed_dim


def test_the_cache_keeps_the_most_recent_entries_only(model, onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))
    cache = CachedText(model.card, lambda: onnx, max_entries=3)
    for text in ["a", "b", "c", "d", "e"]:
        cache.encode_texts([text])
    again = Counting(onnx)
    fresh = CachedText(model.card, lambda: again, max_entries=3)
    fresh.encode_texts(["c", "d", "e"])
    assert again.encoded == []
    fresh.encode_texts(["a"])
    assert again.encoded == ["a"]


def test_concurrent_processes_leave_a_readable_cache(model, onnx, monkeypatch, tmp_path, tiny_model_dir):
    """Two processes adding different queries at once: the file always reads back whole."""
    graph, tok, _ = ot.export_files(model.card)  # the session cache's export, copied: both processes use it
    (tmp_path / "onnx").mkdir()
    for src in (graph, tok):
        shutil.copy(src, tmp_path / "onnx" / src.name)
    monkeypatch.setenv("CXRTOOL_CACHE", str(tmp_path))
    code = ("import sys; from cxrtool.model.refs import peek_card; from cxrtool.model.onnx_text import OnnxText;"
            "from cxrtool.model.text_cache import CachedText;"
            "card = peek_card(sys.argv[1]); c = CachedText(card, lambda: OnnxText.open(card));"
            "[c.encode_texts([f'{sys.argv[2]} {i}']) for i in range(40)]")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tiny_model_dir), word], env=dict(os.environ))
             for word in ("effusion", "nodule")]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    with np.load(cache_file(model.card.vector_tag), allow_pickle=False) as data:
        assert 40 <= len(data["keys"]) <= 80 and data["vectors"].shape == (len(data["keys"]), model.card.embed_dim)
