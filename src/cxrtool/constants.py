"""Constants with meaning, in one place, with where each value comes from."""

from __future__ import annotations

from pathlib import Path

# Default workspace: where `embed` writes shards and `index`/`search` read them.
# Relative to the current directory, so `cxrtool embed X && cxrtool search Q` share it.
WORKSPACE_ENV = "CXRTOOL_WORKSPACE"
DEFAULT_WORKSPACE = "cxrtool_workspace"

# Model selection: env var naming a model directory or hub name used when --model is not given.
MODEL_ENV = "CXRTOOL_MODEL"
# The bundled model's folder (the default model); a workspace that recorded it names it BUNDLED_MODEL,
# so a reinstall elsewhere still finds it.
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
BUNDLED_MODEL = "bundled"
# Where hub models are looked for as local folders (<home>/org/name) and downloads are suggested
# to go: $CXRTOOL_MODELS, else ~/.cache/cxrtool/models (beside the Hugging Face cache's habit).
MODELS_HOME_ENV = "CXRTOOL_MODELS"
DEFAULT_MODELS_HOME = "~/.cache/cxrtool/models"
# Derived files cxrtool can always make again (the image side's ONNX exports): $CXRTOOL_CACHE, else here.
CACHE_ENV = "CXRTOOL_CACHE"
DEFAULT_CACHE = "~/.cache/cxrtool"

# The pixel pipeline's version: bumped whenever decoding (io/decode.py) or a preprocessing rule
# (model/transform.py) changes the pixels a model sees. It is part of every vector id (with a hash
# of the card's image spec), so vectors made before and after a change never mix in one workspace.
# 2: DICOM VOI LUT functions and Presentation LUT Shape; upstream-exact CXR-CLIP and CheXzero rules.
PIXELS_VERSION = 2

# Embedding shards: rows per Parquet shard (a shard is the unit of resume).
SHARD_ROWS = 1024

# CLIP temperature: initialised to 1/0.07 (CLIP, CXR-CLIP), logit scale clamped to ln(100)
# (open_clip) so training cannot blow up the softmax.
LOGIT_SCALE_INIT = 2.6592600369327779  # ln(1/0.07)
LOGIT_SCALE_MAX = 4.605170185988092  # ln(100)

# Shared embedding dimension of the projections (CXR-CLIP uses 512).
DEFAULT_EMBED_DIM = 512

# File suffixes we try to decode as raster images; anything else is sniffed for DICOM's "DICM".
RASTER_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}

# `cxrtool serve`: loopback by default (the page shows hospital images; binding elsewhere is an
# explicit choice and warns). Port 8000 is uvicorn's customary default.
SERVE_HOST = "127.0.0.1"
SERVE_PORT = 8000
# Upload limit: an uncompressed 16-bit 3,000 x 3,000 DX radiograph is ~18 MB and large CR
# plates ~30 MB; 64 MB leaves room while refusing a stray video or archive.
SERVE_MAX_UPLOAD_MB = 64
# Results per query the page may ask for (a grid of 200 thumbnails is already more than a person scans).
SERVE_K_MAX = 200
# Rendered sizes: grid thumbnails (longest side) and the detail view's larger image.
THUMB_SIDE = 256
DETAIL_SIDE = 1024
# In-memory cache of rendered images: a 256-px JPEG thumbnail is ~10-20 kB, a 1,024-px PNG ~0.5 MB.
SERVE_MEMORY_CACHE_MB = 64

# --- Option defaults the CLI shows in --help. They live here (a module that imports nothing) so that
# `cxrtool --help` loads no torch, scikit-learn or faiss. The library modules named beside each one
# re-export it or hold an equal value (tests/test_cli_imports.py checks they agree).

# Zero-shot (cxrtool.evaluate.classification.THRESHOLD): probability at or above which a finding
# counts as present (accuracy, F1, classify's "top findings"). The softmax over positive vs
# negative prompt sets: "more like present than absent".
THRESHOLD = 0.5
# Bootstrap resamples for 95 % CIs (cxrtool.evaluate.bootstrap.N_RESAMPLES): CheXzero's protocol,
# 1,000 samples, percentile interval.
N_RESAMPLES = 1000
# Laterality top-k (cxrtool.evaluate.laterality.LATERALITY_KS): 10, a first results page; 50,
# enough one-sided images to count on small test sets.
LATERALITY_KS = (10, 50)

# Near-duplicates: the default model (v5) puts one radiograph re-encoded in 7 transfer syntaxes at
# cosine 0.969-1.000 to its copies (reduced-resolution JPEG 2000 decoding is the farthest), while
# different studies of one patient in the sample archive reach 0.77 and different patients 0.76
# (v4: 0.969-1.000, 0.69, 0.68; v3: 0.980-1.000, 0.77, 0.67; `python scripts/dedupe_cosines.py`).
# Weaker models crowd more: pass dedupe=None to keep all. (cxrtool.index.search.DEDUPE_COSINE)
DEDUPE_COSINE = 0.95
# FAISS index kinds `cxrtool index --kind` accepts (cxrtool.index.build.KINDS); ivfsq: IVF with
# 8-bit scalar-quantised vectors and an exact re-rank (cxrtool.index.kinds).
INDEX_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfsq", "ivfpq")
# Where a file dropped out of `embed`, for errors.jsonl (cxrtool.embed.errors_log.STAGES).
ERROR_STAGES = ("discover", "read", "header", "decode")
# Manifest fields `embed-reports` can embed (cxrtool.embed.reports.TEXT_FIELDS).
REPORT_TEXT_FIELDS = ("text", "findings", "impression", "report")
# Modalities of projection radiographs; secondary captures (OT/SC) only on request
# (cxrtool.io.classify.RADIOGRAPH_MODALITIES).
RADIOGRAPH_MODALITIES = ("CR", "DX")
# Names of the training presets (the settings themselves: cxrtool.train.config.PRESETS).
TRAIN_PRESETS = ("cxr-clip-r50", "cxr-clip-swint")
# CXR-CLIP's text tower (cxrtool.model.imports.cxr_clip.DEFAULT_TEXT_ENCODER).
CXR_CLIP_TEXT_ENCODER = "emilyalsentzer/Bio_ClinicalBERT"
