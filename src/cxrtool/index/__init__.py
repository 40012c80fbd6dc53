"""FAISS indexes over embedding shards, and search over them."""

from cxrtool.index.build import IndexInfo, build_index, choose_index_kind, load_index
from cxrtool.index.search import Hit, search

__all__ = ["Hit", "IndexInfo", "build_index", "choose_index_kind", "load_index", "search"]
