"""Models by hub name: where their local copies live, how a name is recognised, and the download.

A hub name is ``org/name`` (a transformers CLIP/SigLIP repository) or ``hf-hub:org/name``
(open_clip's spelling). Its local copy is looked for under the models home first
(``$CXRTOOL_MODELS``, else ``~/.cache/cxrtool/models``), then in the Hugging Face cache, then
downloaded; every failure is one :class:`~cxrtool.errors.ModelError` whose hint says what to
download and where to put it (the hubs are often unreachable from hospital networks).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cxrtool.constants import DEFAULT_MODELS_HOME, MODELS_HOME_ENV
from cxrtool.errors import ModelError

HUB_PREFIX = "hf-hub:"  # open_clip's spelling of a hub model; plain names are transformers models
OPEN_CLIP_CONFIG = "open_clip_config.json"

HF_FILES = ["config.json", "preprocessor_config.json", "tokenizer*", "special_tokens_map.json", "vocab*",
            "merges.txt", "*.model", "added_tokens.json", "model.safetensors", "model-*.safetensors",
            "model.safetensors.index.json"]
HF_BIN_FILES = ["pytorch_model.bin", "pytorch_model-*.bin", "pytorch_model.bin.index.json"]
OPEN_CLIP_FILES = [OPEN_CLIP_CONFIG, "open_clip_model.safetensors", "open_clip_pytorch_model.*", "tokenizer*",
                   "special_tokens_map.json", "vocab*", "merges.txt", "*.model"]


def models_home() -> Path:
    """Where local copies of hub models live: $CXRTOOL_MODELS, else ~/.cache/cxrtool/models."""
    return Path(os.environ.get(MODELS_HOME_ENV) or DEFAULT_MODELS_HOME).expanduser()


def looks_like_hub_name(name: str) -> bool:
    repo = name.removeprefix(HUB_PREFIX)
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", repo)) and not name.startswith((".", "/", "~"))


def local_copy(name: str) -> Path:
    """Where the download hint tells people to put hub model ``name``: ``<models home>/org/name``."""
    return models_home() / name.removeprefix(HUB_PREFIX)


def locate(name: str, fetch: bool = False) -> Path | None:
    """The directory of hub model ``name``: its copy under the models home, else (``fetch``) the
    Hugging Face cache's or a download's snapshot; None when not fetching and there is no copy.
    A name that is not a hub name is refused here, with what ``--model`` takes."""
    if not looks_like_hub_name(name):
        raise ModelError(f"model {name!r} is neither a directory nor a hub name",
                         "pass a model directory, or a hub name such as google/medsiglip-448 or hf-hub:"
                         "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (`cxrtool models` lists them)")
    local = local_copy(name)
    if local.is_dir():
        return local
    return fetch_hub_model(name) if fetch else None


def hub_download_hint(name: str, target: Path) -> str:
    repo = name.removeprefix(HUB_PREFIX)
    return (f"download it where the hub is reachable: `hf download {repo} --local-dir {target}` (gated models: accept "
            f"the licence on the model's hub page and `hf auth login` first), then pass --model {target}")


def fetch_hub_model(name: str) -> Path:
    """The local snapshot of hub model ``name`` (from the Hugging Face cache, else downloaded)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = name.removeprefix(HUB_PREFIX)
    patterns = OPEN_CLIP_FILES if name.startswith(HUB_PREFIX) else HF_FILES
    try:
        path = Path(snapshot_download(repo, allow_patterns=patterns))
        if not name.startswith(HUB_PREFIX) and not any(path.glob("*.safetensors")):
            path = Path(snapshot_download(repo, allow_patterns=patterns + HF_BIN_FILES))
    except GatedRepoError:
        why = "is gated (its licence must be accepted on the hub, then `hf auth login`)"
    except RepositoryNotFoundError:
        why = "is not on the Hugging Face hub (or is private)"
    except LocalEntryNotFoundError:
        why = "is not in the local Hugging Face cache and the hub cannot be reached (offline)"
    except Exception as exc:  # network and HTTP errors of every kind: one line for the user
        why = f"could not be fetched ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    else:
        return path
    raise ModelError(f"model {name!r} {why}", hub_download_hint(name, local_copy(name)))
