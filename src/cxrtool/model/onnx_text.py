"""The text side of a model on ONNX Runtime + ``tokenizers``: a text search without torch.

A cold ``cxrtool search "left pleural effusion"`` spent most of its seconds importing torch and
loading the whole model for one sentence. What a text query needs is the tokenizer and the text
tower (with pooling, projection and normalisation): exported here, once, into the ONNX cache
(:mod:`cxrtool.model.onnx_export`) as two files named by the model's vector tag:

    text-<tag>-x1.tokenizer.json   the model's fast tokenizer, with the card's truncation and padding
    text-<tag>-x1.onnx             TextTower: (input_ids, attention_mask) -> unit vectors

The export is made where the model is loaded anyway (``cxrtool index`` tunes text-query depth with
it; a search that had to load torch), and kept only if, on :data:`CHECK_TEXTS` (the prompt bank's
sentences and awkward cases: empty, over-long, accented, upper-case, one at a time and padded in
batches), the tokenizer gives the same token ids as the model's and the vectors agree with torch's
at cosine >= MIN_COSINE. A refused export leaves ``<stem>.refused`` with the reason, so it is not
retried on every search. Families whose texts pass through more than the tokenizer (the seed
families' cleaning hook: BioViL, MedCLIP, GLoRIA; open_clip's own tokenizer) are not exported:
torch stays their text path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.model.card import ModelCard
from cxrtool.model.onnx_export import cache_dir, cache_stem, export_module, first_line, open_session, parity, publish
from cxrtool.model.text_side import TextSide

log = logging.getLogger(__name__)

TEXT_EXPORT_VERSION = 1  # bump when what is exported changes (the cache key includes it)
TEXT_THREADS = 2  # one sentence at a time: more threads than this only add start-up cost


def export_files(card: ModelCard) -> tuple[Path, Path, Path]:
    """(graph, tokenizer, refusal note) paths of the model's text export."""
    stem = cache_dir() / cache_stem(card.vector_tag, "text", TEXT_EXPORT_VERSION)
    return Path(f"{stem}.onnx"), Path(f"{stem}.tokenizer.json"), Path(f"{stem}.refused")


class OnnxText(TextSide):
    """A model's text side on ONNX Runtime: ``encode_texts`` as the model's own, without torch."""

    def __init__(self, card: ModelCard, session: Any, tokenizer: Any) -> None:
        self.card, self.session, self.tokenizer = card, session, tokenizer

    @classmethod
    def open(cls, card: ModelCard, threads: int = TEXT_THREADS) -> OnnxText | None:
        """The model's exported text side, or None when there is none (or it does not load: then it
        is removed, to be made afresh)."""
        graph, tok_file, _ = export_files(card)
        if not card.fingerprint or not (graph.is_file() and tok_file.is_file()):
            return None
        try:
            import onnxruntime  # noqa: F401
            from tokenizers import Tokenizer
        except ImportError:
            return None
        try:
            return cls(card, open_session(graph, threads), Tokenizer.from_file(str(tok_file)))
        except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file in the cache
            log.warning("the cached text export of this model does not load (%s); using torch", first_line(exc))
            for path in (graph, tok_file):
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            return None

    def tokens(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) as int64 arrays, padded and cut as the card says."""
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return ids, mask

    def _encode_texts(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.tokens(texts[i : i + batch_size])
            out.append(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        if not out:
            return np.zeros((0, self.card.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def not_exportable(model: Any) -> str:
    """'' when the model's text path is its tokenizer and text tower alone, else why not."""
    from cxrtool.model.dual import DualEncoder

    if type(model).tokenize is not DualEncoder.tokenize:
        return "the model tokenizes texts its own way"
    if hasattr(model, "clean"):
        return "the model cleans texts before tokenizing them"
    if getattr(model.tokenizer, "backend_tokenizer", None) is None:
        return "the model's tokenizer is not a fast (tokenizers) one"
    if not model.card.fingerprint:
        return "the model has no fingerprint (not loaded from a model directory)"
    if model.device.type != "cpu":
        return "exports are made from a model on the CPU"
    return ""


def card_tokenizer(model: Any) -> Any:
    """The model's fast tokenizer as a ``tokenizers.Tokenizer`` that cuts and pads as
    :meth:`DualEncoder.tokenize` asks transformers to."""
    from tokenizers import Tokenizer

    hf, spec = model.tokenizer, model.card.text
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.enable_truncation(max_length=spec.max_length, stride=0, strategy="longest_first",
                          direction=getattr(hf, "truncation_side", "right"))
    tok.enable_padding(direction=getattr(hf, "padding_side", "right"), pad_id=hf.pad_token_id,
                       pad_token=hf.pad_token, pad_type_id=getattr(hf, "pad_token_type_id", 0),
                       length=spec.max_length if spec.padding == "max_length" else None)
    return tok


def check_texts() -> list[str]:
    """What an export must get right before it is used: real query sentences and awkward cases."""
    from cxrtool.data.prompts import PromptBank

    bank = PromptBank.load()
    sentences = sorted({t for p in bank.labels.values() for t in (*p.positive, *p.uncertain)})
    awkward = ["", "Left pleural effusion.", "CARDIOMEGALY", "no acute cardiopulmonary process",
               "Épanchement pleural gauche, côté droit normal", "pneumothorax 2 cm, right apex; s/p chest tube",
               " ".join(["small bilateral pleural effusions with adjacent atelectasis"] * 40)]
    return awkward + sentences


def export_text(model: Any) -> str:
    """Export the model's text side into the cache if it is not there; '' when it is there (now or
    already), else why not (also written to ``<stem>.refused``, so it is not tried again)."""
    graph, tok_file, refused = export_files(model.card)
    if graph.is_file() and tok_file.is_file():
        return ""
    if refused.is_file():
        return refused.read_text(errors="replace").strip() or "refused earlier"
    why = not_exportable(model)
    if why:
        return why
    try:
        why = _export(model, graph, tok_file)
    except Exception as exc:  # noqa: BLE001 - an operator ONNX lacks, a read-only cache: torch stays the path
        return f"export to ONNX failed ({type(exc).__name__}: {first_line(exc)})"
    if why:
        with contextlib.suppress(OSError):
            fd, tmp = tempfile.mkstemp(prefix=".refused-", dir=refused.parent)
            with os.fdopen(fd, "w") as fh:
                fh.write(why + "\n")
            publish(Path(tmp), refused)
        log.warning("text queries stay on torch for this model: %s", why)
    return why


def _export(model: Any, graph: Path, tok_file: Path) -> str:
    import torch
    from torch import nn

    class TextTower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.model.text_features(input_ids, attention_mask)

    tokenizer = card_tokenizer(model)
    texts = check_texts()
    reference = model.tokenize(texts[:3])  # the model's own tokenizer: a padded batch to trace
    cache_dir().mkdir(parents=True, exist_ok=True)
    fd, tmp_graph = tempfile.mkstemp(prefix=".text-", suffix=".onnx", dir=cache_dir())
    os.close(fd)
    fd, tmp_tok = tempfile.mkstemp(prefix=".text-", suffix=".json", dir=cache_dir())
    os.close(fd)
    try:
        model.eval()
        export_module(TextTower(), (reference["input_ids"], reference["attention_mask"]), Path(tmp_graph),
                      ["input_ids", "attention_mask"], ["vectors"],
                      {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                       "vectors": {0: "batch"}})
        tokenizer.save(tmp_tok)
        runner = OnnxText(model.card, open_session(Path(tmp_graph), TEXT_THREADS), tokenizer)
        why = _check(model, runner, texts)
        if not why:
            publish(Path(tmp_tok), tok_file)  # the graph last: its presence says the pair is whole
            publish(Path(tmp_graph), graph)
        return why
    finally:
        Path(tmp_graph).unlink(missing_ok=True)
        Path(tmp_tok).unlink(missing_ok=True)


def _check(model: Any, runner: OnnxText, texts: list[str]) -> str:
    """'' when ``runner`` tokenizes and encodes ``texts`` as the model does, one at a time and in padded
    batches of 16, else why not."""
    import torch

    for batch in [texts[i : i + 16] for i in range(0, len(texts), 16)] + [[t] for t in texts[:8]]:
        ids, mask = runner.tokens(batch)
        want = {k: v.numpy() for k, v in model.tokenize(batch).items()}
        if not (np.array_equal(ids, want["input_ids"]) and np.array_equal(mask, want["attention_mask"])):
            return f"the exported tokenizer splits {batch[0][:40]!r}... differently from the model's"
        with torch.inference_mode():
            reference = model.text_features(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        why = parity(runner._encode_texts(batch, len(batch)), reference, f"{len(batch)} check text(s)")
        if why:
            return why
    return ""
