"""FAISS indexes over embedding shards, and search over them (``Index.open(ws).search(...)``).

Build side: ``kinds`` (which index), ``build`` (train, add, write), ``tuning`` (recall, depths).
Query side: ``open`` (read back, rebuild if stale), ``faiss_query`` (knn, search parameters, GPU),
``search`` (the API). ``info`` (``index.json``) and ``store`` (rows, vectors) serve both.
"""

from cxrtool.index.build import build_index
from cxrtool.index.filters import Filters
from cxrtool.index.info import IndexInfo
from cxrtool.index.kinds import choose_index_kind
from cxrtool.index.open import load_index
from cxrtool.index.search import Hit, Index, search

__all__ = ["Filters", "Hit", "Index", "IndexInfo", "build_index", "choose_index_kind", "load_index", "search"]
