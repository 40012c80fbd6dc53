"""What the seed-model families (BioViL/BioViL-T, MedCLIP, GLoRIA) share.

Each of these projects defined its own towers (a torchvision ResNet-50 or Swin-T with its own
head; a BERT text encoder with its own pooling), so each family module rebuilds its architecture
in plain PyTorch and says how a feature is pooled. What they have in common lives here:

- the directory: ``model.json`` (the card) + ``model.safetensors`` (every tensor, named as the
  family's modules name them) + ``text/`` (a transformers ``BertConfig`` and the tokenizer files);
- the text tower is always transformers' own ``BertModel`` built from that config: never
  ``AutoModel`` and never remote code (CXR-BERT's hub config names ``model_type: cxr-bert`` with
  remote code; the importer keeps only its BERT fields);
- scoring: the card's fixed ``scoring.logit_scale`` (these models are used as released, never
  trained further by cxrtool, so the temperature is a recorded constant, not a parameter).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from cxrtool.errors import ModelError
from cxrtool.model.card import TEXT_DIR, WEIGHTS_FILE, ModelCard
from cxrtool.model.dual import DualEncoder
from cxrtool.model.families.base import Family, describe_card, load_exact, read_weights, write_model_files
from cxrtool.model.sources import quiet_transformers

# The BertConfig fields a seed model's text tower needs (a hub config may carry more, e.g. remote-code maps).
BERT_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
               "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "position_embedding_type")


class SeedEncoder(DualEncoder):
    """A seed model behind the DualEncoder interface: ``image`` and ``text`` are the family's modules,
    each giving the (unnormalised) embedding; a family may clean texts first (:meth:`clean`)."""

    def __init__(self, card: ModelCard, image: nn.Module, text: nn.Module, tokenizer: Any) -> None:
        nn.Module.__init__(self)  # no DualEncoder projections: the family's modules hold their own heads
        self.card = card
        self.origin = ""
        self.image = image
        self.text = text
        self.tokenizer = tokenizer

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(pixels), dim=-1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(input_ids, attention_mask), dim=-1)

    def clean(self, text: str) -> str:
        """What the project did to a text before tokenising it (nothing, unless a family says otherwise)."""
        return text

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each text cleaned as the project did, then tokenised as the card says (length, padding)."""
        return super().tokenize([self.clean(str(t)) for t in texts])

    def scale(self) -> torch.Tensor:
        """The recorded temperature multiplier (the card's ``scoring.logit_scale``)."""
        return torch.tensor(float(self.card.scoring.logit_scale or 1.0), device=self.device)


def bert_config(fields: dict[str, Any], **overrides: Any) -> Any:
    """A transformers ``BertConfig`` from a (hub) config's BERT fields only."""
    from transformers import BertConfig

    kept = {k: fields[k] for k in BERT_FIELDS if k in fields}
    return BertConfig(**{**kept, **overrides})


def bert_tokenizer(vocab_file: Path, lower: bool = True, max_length: int | None = None) -> Any:
    """``BertTokenizerFast`` over a ``vocab.txt``, built directly (a hub tokenizer_config may name a
    remote-code class)."""
    from transformers import BertTokenizerFast

    quiet_transformers()
    # transformers 5 takes ``vocab=`` and silently ignores 4.x's ``vocab_file=`` (a 5-token tokenizer results)
    keyword = "vocab_file" if "vocab_file" in inspect.signature(BertTokenizerFast.__init__).parameters else "vocab"
    try:
        tok = BertTokenizerFast(**{keyword: str(vocab_file)}, do_lower_case=lower)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{vocab_file}: not a BERT vocabulary ({str(exc).splitlines()[0]})") from None
    if len(tok) <= len(tok.all_special_tokens):
        raise ModelError(f"{vocab_file}: no vocabulary in it ({len(tok)} tokens)", "give the model's vocab.txt")
    if max_length:
        tok.model_max_length = max_length
    return tok


def text_source_files(text_encoder: str, what: str = "Bio_ClinicalBERT") -> tuple[dict[str, Any], Path]:
    """(config.json fields, vocab.txt path) of an importer's text encoder: a local folder, else the
    Hugging Face cache or hub (those two files only; the weights come from the checkpoint)."""
    folder = Path(text_encoder).expanduser()
    hint = (f"download config.json and vocab.txt from https://huggingface.co/{text_encoder} into a folder and pass "
            "--text-encoder FOLDER (no weights needed: they come from the checkpoint)")
    try:
        if folder.is_dir():
            config_path, vocab = folder / "config.json", folder / "vocab.txt"
            if not config_path.is_file() or not vocab.is_file():
                raise OSError("config.json or vocab.txt is missing")
        else:
            from huggingface_hub import hf_hub_download

            config_path = Path(hf_hub_download(text_encoder, "config.json"))
            vocab = Path(hf_hub_download(text_encoder, "vocab.txt"))
        fields = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        if folder.is_dir():
            raise ModelError(f"--text-encoder {text_encoder}: no usable config.json + vocab.txt there "
                             f"({str(exc).splitlines()[0]})",
                             f"the folder needs {what}'s config.json and vocab.txt (no weights needed)") from None
        raise ModelError(f"cannot get the config and vocabulary of text encoder {text_encoder!r}: not cached here "
                         "and the Hugging Face hub did not provide them", hint) from None
    except Exception as exc:  # huggingface_hub's offline / HTTP / unknown-repository errors
        raise ModelError(f"cannot get the config and vocabulary of text encoder {text_encoder!r}: not cached here "
                         f"and the Hugging Face hub did not provide them ({type(exc).__name__})", hint) from None
    if not isinstance(fields, dict) or not fields.get("vocab_size") or not fields.get("hidden_size"):
        raise ModelError(f"--text-encoder {text_encoder}: config.json is not a BERT config (no vocab_size/hidden_size)")
    return fields, vocab


def text_source(text_encoder: str, max_length: int, what: str = "Bio_ClinicalBERT") -> tuple[Any, Any]:
    """(BertConfig, lower-casing WordPiece tokenizer) of an importer's text encoder, checked to fit
    each other (transformers builds near-empty tokenizers silently from a wrong vocabulary)."""
    fields, vocab = text_source_files(text_encoder, what)
    config = bert_config(fields)
    tokenizer = bert_tokenizer(vocab, lower=True, max_length=max_length)
    if not 0.9 * config.vocab_size <= len(tokenizer) <= config.vocab_size:
        raise ModelError(f"--text-encoder {text_encoder}: its vocabulary has {len(tokenizer)} tokens for the text "
                         f"tower's {config.vocab_size} embeddings",
                         f"the folder needs the vocab.txt of the model its config.json describes ({what})")
    return config, tokenizer


def text_parts(text_dir: Path) -> tuple[nn.Module, Any]:
    """(untrained ``BertModel`` without pooler, tokenizer) rebuilt from a model directory's text/."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    quiet_transformers()
    try:
        config = BertConfig.from_pretrained(text_dir)
        tokenizer = BertTokenizerFast.from_pretrained(text_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot rebuild the text tower from {text_dir}: {exc}".splitlines()[0],
                         "copy the whole model directory (text/ holds its config and vocabulary)") from None
    if not 0.9 * config.vocab_size <= len(tokenizer) <= config.vocab_size:
        raise ModelError(f"{text_dir}: the tokenizer has {len(tokenizer)} tokens for {config.vocab_size} embeddings")
    return BertModel(config, add_pooling_layer=False), tokenizer


def load_seed(directory: Path, card: ModelCard | None,
              build: Callable[[ModelCard, nn.Module, Any], SeedEncoder]) -> SeedEncoder:
    """Rebuild a seed model from its directory: ``build(card, bert, tokenizer)`` makes the modules,
    then every tensor of model.safetensors is placed by name (missing/extra/wrong shape refuse)."""
    if card is None:
        card = ModelCard.load(directory)
    bert, tokenizer = text_parts(directory / TEXT_DIR)
    model = build(card, bert, tokenizer)
    load_exact(model, read_weights(directory), str(directory))
    return model


def save_seed(model: SeedEncoder, directory: Path, card: ModelCard, changed_only: bool = False) -> None:
    """model.safetensors (every tensor) + text/ (BertConfig + tokenizer) + model.json."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    card.base_weights = []

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "fingerprint": card.fingerprint})
        (tmp / WEIGHTS_FILE).chmod(0o644)
        text_dir = tmp / TEXT_DIR
        model.text.bert.config.save_pretrained(text_dir)  # each family keeps its BertModel at text.bert
        model.tokenizer.save_pretrained(text_dir)

    write_model_files(directory, card, fill)


def seed_family(name: str, build: Callable[[ModelCard, nn.Module, Any], SeedEncoder]) -> Family:
    """The Family record of one seed model: known by its card only (no native layout to detect)."""
    return Family(names=(name,), detect=lambda directory: False,
                  load=lambda directory, card, _name="": load_seed(directory, card, build),
                  save=save_seed, describe=describe_card)
