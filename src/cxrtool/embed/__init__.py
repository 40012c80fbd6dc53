"""Bulk embedding of an archive into Parquet shards (resumable)."""

from cxrtool.embed.pipeline import EmbedSummary, embed_archive
from cxrtool.embed.shards import SHARD_SCHEMA_VERSION, read_shard_metadata, read_shard_vectors

__all__ = ["SHARD_SCHEMA_VERSION", "EmbedSummary", "embed_archive", "read_shard_metadata", "read_shard_vectors"]
