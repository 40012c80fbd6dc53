"""Constants with meaning, in one place, with where each value comes from."""

from __future__ import annotations

# Default workspace: where `embed` writes shards and `index`/`search` read them.
# Relative to the current directory, so `cxrtool embed X && cxrtool search Q` share it.
WORKSPACE_ENV = "CXRTOOL_WORKSPACE"
DEFAULT_WORKSPACE = "cxrtool_workspace"

# Model selection: env var naming a model directory or hub name used when --model is not given.
MODEL_ENV = "CXRTOOL_MODEL"
# Where hub models are looked for as local folders (<home>/org/name) and downloads are suggested
# to go: $CXRTOOL_MODELS, else ~/.cache/cxrtool/models (beside the Hugging Face cache's habit).
MODELS_HOME_ENV = "CXRTOOL_MODELS"
DEFAULT_MODELS_HOME = "~/.cache/cxrtool/models"

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
