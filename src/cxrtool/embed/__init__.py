"""Bulk embedding of an archive into Parquet shards (resumable)."""

from typing import TYPE_CHECKING

from cxrtool.lazy import lazy_exports

if TYPE_CHECKING:  # the names as type checkers and editors see them
    from cxrtool.embed.pipeline import EmbedSummary, embed_archive
    from cxrtool.embed.shards import SHARD_SCHEMA_VERSION, read_shard_metadata, read_shard_vectors

# Imported on first use: importing a light submodule must not import torch (cxrtool/lazy.py).
_EXPORTS = {
    "EmbedSummary": "cxrtool.embed.pipeline",
    "embed_archive": "cxrtool.embed.pipeline",
    "SHARD_SCHEMA_VERSION": "cxrtool.embed.shards",
    "read_shard_metadata": "cxrtool.embed.shards",
    "read_shard_vectors": "cxrtool.embed.shards",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["SHARD_SCHEMA_VERSION", "EmbedSummary", "embed_archive", "read_shard_metadata", "read_shard_vectors"]
