"""FAISS indexes over embedding shards, and search over them (``Index.open(ws).search(...)``)."""

from cxrtool.index.build import IndexInfo, build_index, choose_index_kind, load_index
from cxrtool.index.filters import Filters
from cxrtool.index.search import Hit, Index, search

__all__ = ["Filters", "Hit", "Index", "IndexInfo", "build_index", "choose_index_kind", "load_index", "search"]
