"""Shared fixtures: the bundled sample archive and a tiny, randomly initialised dual encoder.

The tiny model is real timm + transformers code (a small timm CNN and a 2-layer BERT saved with
save_pretrained, using MiniLM's real tokenizer), just small enough to make tests fast. Its random
weights are seeded (``CXRTOOL_TEST_SEED``, default 0): a test that fails under another seed
asserts something a random model only gets right by luck (the suite passes with seeds 0, 1, 2).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from .tiny_native import build_hf_clip, build_hf_siglip

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The installation's pseudonym key is made on first use in the config folder: the tests (and the CLI
# processes they start) use a throwaway one, never the user's.
os.environ["CXRTOOL_CONFIG"] = tempfile.mkdtemp(prefix="cxrtool-test-config-")
os.environ.pop("CXRTOOL_PSEUDONYM_KEY", None)
# ONNX exports of the image side (made by embed on first use): a throwaway cache, never the user's.
os.environ["CXRTOOL_CACHE"] = tempfile.mkdtemp(prefix="cxrtool-test-cache-")

REPO = Path(__file__).resolve().parents[1]
# The suite writes real checkpoints (ResNet-50s, BERT-base towers): kept only for failed tests
# (pyproject's tmp_path_retention_policy) and for the module that made them (module_tmp), so that a
# run needs about one module's worth of disk rather than the sum of all of them.
SAMPLE = REPO / "sample_data"
ARCHIVE = SAMPLE / "archive"


@pytest.fixture(scope="session", autouse=True)
def _throwaway_folders():
    yield
    for var in ("CXRTOOL_CONFIG", "CXRTOOL_CACHE"):
        shutil.rmtree(os.environ[var], ignore_errors=True)


class ModuleTmp:
    """tmp_path_factory's mktemp for module-scoped fixtures; the folders go when the module ends."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        self.factory, self.made = factory, []

    def mktemp(self, name: str) -> Path:
        self.made.append(self.factory.mktemp(name))
        return self.made[-1]


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory):
    tmp = ModuleTmp(tmp_path_factory)
    yield tmp
    for d in tmp.made:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sample_archive() -> Path:
    return ARCHIVE


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from cxrtool.model.sources import minilm_dir

    d = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(int(os.environ.get("CXRTOOL_TEST_SEED", "0")))  # the same random text encoder on every run
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_model(tiny_text_dir):
    import torch

    from cxrtool.model import create_model

    torch.manual_seed(int(os.environ.get("CXRTOOL_TEST_SEED", "0")))
    return create_model("mobilenetv3_small_050", str(tiny_text_dir), image_weights=None, embed_dim=32,
                        input_size=64, max_length=32)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tmp_path_factory) -> Path:
    from cxrtool.model import save_model_dir

    return save_model_dir(tiny_model, tmp_path_factory.mktemp("models") / "tiny")


# Tiny native transformers CLIP / SigLIP directories (tests/tiny_native.py), one per test module.
@pytest.fixture(scope="module")
def clip_dir(module_tmp):
    return build_hf_clip(module_tmp.mktemp("native") / "tiny-clip")


@pytest.fixture(scope="module")
def siglip_dir(module_tmp):
    return build_hf_siglip(module_tmp.mktemp("native") / "tiny-siglip")


# The serve page's browser: Debian's chromium driven by Playwright (`make test` installs it).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.fixture(scope="module")
def browser():
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (`make test` installs Debian's chromium with apt-get; "
                    "it could not here: no root, no sudo or no package source)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
