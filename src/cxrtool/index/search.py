"""Search: a text query or an example image -> the nearest images (or reports), with metadata.

``Index.open(workspace)`` loads the FAISS index, its rows and memory-mapped vectors once; each
``search`` is then a knn plus an in-memory row lookup (no shard reads). Filters are applied
before ranking: a small matching set is ranked exactly from the stored vectors, a large one
through a FAISS id selector. ``per_study`` keeps the best view of each study; near-duplicates
(same file content, or cosine >= ``dedupe``) are suppressed.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.constants import DEDUPE_COSINE  # near-duplicate threshold (why: see constants)
from cxrtool.data.prompts import PromptBank
from cxrtool.errors import WorkspaceError
from cxrtool.index.faiss_query import (
    FILTER_ROWS_FACTOR,
    filtered_lists,
    gpu_available,
    ivf_rows_per_list,
    knn,
    search_depth,
    to_gpu,
)
from cxrtool.index.filters import Filters
from cxrtool.index.info import IndexInfo
from cxrtool.index.lazy_model import LazyModel
from cxrtool.index.open import load_index
from cxrtool.index.query import text_query_vector
from cxrtool.index.store import RowStore
from cxrtool.io.decode import DecodedImage
from cxrtool.workspace import Workspace, check_same_model

if TYPE_CHECKING:
    from cxrtool.model.card import ModelCard
    from cxrtool.model.dual import DualEncoder
    from cxrtool.model.text_side import TextSide

EXACT_SUBSET_MAX = 20_000  # filtered sets up to this size are ranked exactly (a few ms)


@dataclass
class Hit:
    rank: int
    score: float
    id: int
    path: str  # archive-relative image path, or the report key for report results
    study_key: str
    view: str = ""
    modality: str = ""
    body_part: str = ""
    study_date: str = ""
    patient_key: str = ""
    text: str = ""  # report text, for report results
    views_in_study: int = 1  # with per_study: how many of the study's images matched
    series_uid: str = ""
    sop_uid: str = ""
    retrieve_url: str = ""  # the source: WADO-RS URL (DICOMweb) or file path (index/links.py)
    viewer_url: str = ""  # from the user's viewer template, if set
    extra: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def _hit(rank: int, score: float, row: dict, reports: bool) -> Hit:
    s = lambda k: row.get(k) or ""  # noqa: E731
    if reports:
        return Hit(rank, round(score, 4), int(row["id"]), s("report_key"), s("study_key"), text=s("text"), extra=row)
    return Hit(rank, round(score, 4), int(row["id"]), s("path"), s("study_key"), s("view"), s("modality"),
               s("body_part"), s("study_date"), s("patient_key"), series_uid=s("series_uid"), sop_uid=s("sop_uid"),
               extra=row)


class Index:
    """A searchable collection (images or reports) of a workspace."""

    def __init__(self, ws: Workspace, index, info: IndexInfo, store: RowStore, target: str,
                 model: LazyModel | DualEncoder | str | None = None, device: str = "cpu") -> None:
        self.workspace, self.index, self.info, self.store, self.target = ws, index, info, store, target
        self._model = LazyModel.of(model, device)
        self._text: TextSide | None = None  # what text queries are encoded with (text_side)
        self._selectors: OrderedDict[tuple, tuple[np.ndarray, object, np.ndarray | None]] = OrderedDict()
        self._gpu_index = to_gpu(index) if device.startswith("cuda") and gpu_available() else None
        self._lock = threading.Lock()  # the filter cache (the web page searches from threads)
        self._encode_lock = threading.Lock()

    @classmethod
    def open(cls, workspace: str | Path | None = None, target: str = "images", model: DualEncoder | str | None = None,
             device: str = "cpu", progress: bool = False, mapped: bool = False) -> Index:
        """Open the index of ``target`` in ``workspace`` (its newest whole generation; search never
        builds: see :mod:`cxrtool.index.open`). ``model`` is loaded lazily, on the first text or
        image query, and once. ``progress`` is accepted for symmetry with the build side.
        ``mapped``: memory-map the FAISS lists (opens at once, little private memory, scans slower:
        for a process that answers one query and exits, like the CLI; ``open.read_index_mapped``)."""
        if target not in ("images", "reports"):
            raise WorkspaceError(f"unknown search target {target!r}", "use images or reports")
        ws = Workspace.resolve(workspace)
        index, info, store = load_index(ws.root, target, mapped=mapped)
        return cls(ws, index, info, store, target, LazyModel.of(ws.model_of(model), device), device)

    def __len__(self) -> int:
        return len(self.store)

    # ------------------------------------------------------------------------------------ model
    @property
    def model(self) -> DualEncoder:
        """The whole model (torch), loaded on first use: image queries need it."""
        model = self._model.get()
        self._check_card(model.card)
        return model

    @property
    def card(self) -> ModelCard:
        """The model's card, checked against the index, without loading the model when it has a card."""
        card = self._model.card()
        self._check_card(card)
        return card

    def _check_card(self, card: ModelCard) -> None:
        if card.vector_id == self.info.model_fingerprint:  # every query passes here: no file read
            return
        recorded = self.workspace.read_json(self.workspace.embed_info) or {}
        check_same_model(card, self.info.model_fingerprint, f"the index in {self.workspace.root} was built",
                         "leave --model out (the workspace remembers its model), or re-embed with --overwrite",
                         recorded.get("model_ref") or recorded.get("model") or "")

    @property
    def text_side(self) -> TextSide:
        """What text queries are encoded with. A model already in memory (the web page's, a library
        caller's) encodes them itself. A model known by name is not loaded for them: the query-vector
        cache answers texts seen before (:mod:`cxrtool.model.text_cache`), the text side's ONNX export
        the others (:mod:`cxrtool.model.onnx_text`: no torch), and only without an export the whole
        model, which then makes one for the next search."""
        if self._text is None:
            card = self.card
            if self._model.loaded or not card.fingerprint:
                self._text = self.model
            else:
                from cxrtool.model.text_cache import CachedText

                self._text = CachedText(card, self._load_text_side)
        return self._text

    def _load_text_side(self) -> TextSide:
        from cxrtool.model.onnx_text import OnnxText, export_text

        if self._model.device == "cpu":
            onnx = OnnxText.open(self.card)
            if onnx is not None:
                return onnx
        model = self.model
        if model.device.type == "cpu":
            export_text(model)  # for the next search (a refusal is logged once, and remembered)
        return model

    def embed_query(self, query: str | None = None, image: str | Path | DecodedImage | None = None,
                    expand: bool = True) -> np.ndarray:
        """The query's vector: ``image`` is a file or an already decoded image (an upload).
        A text query that names a finding is expanded with the prompt bank's sentences for it, and
        one that names a side is contrasted with the other side (:mod:`cxrtool.index.query`),
        unless ``expand`` is False.
        One query is encoded at a time: the model already uses every core, and a fast tokenizer
        shared between threads fails ("Already borrowed")."""
        if (query is None) == (image is None):
            raise WorkspaceError("give either a text query or --image PATH (not both)")
        with self._encode_lock:
            if query is not None:
                return text_query_vector(self.text_side, query, PromptBank.load(), expand=expand)
            return self.model.encode_images([image if isinstance(image, DecodedImage) else Path(image)])[0]

    # ---------------------------------------------------------------------------------- filters
    def _filter_state(self, filters: Filters) -> tuple[np.ndarray, object, np.ndarray | None, np.ndarray | None]:
        """(matching positions, FAISS selector or None, their vectors for exact ranking or None,
        matching rows per inverted list or None), cached for the last few filters: a page or a
        script repeats them query after query."""
        import faiss

        key = filters.key()
        with self._lock:
            if key not in self._selectors:
                positions = np.flatnonzero(filters.mask(self.store.table))
                selector, vectors, per_list = None, None, None
                if len(positions) > EXACT_SUBSET_MAX:
                    selector = faiss.IDSelectorBatch(self.store.ids[positions])
                    list_of = self.store.derived("ivf_list_of_rows", lambda: ivf_rows_per_list(self.index, self.store))
                    if list_of is not None:
                        nlist = faiss.extract_index_ivf(self.index).nlist
                        per_list = np.bincount(list_of[positions][list_of[positions] >= 0], minlength=nlist)
                else:
                    vectors = self.store.vectors(positions)  # few rows: ranked exactly
                self._selectors[key] = (positions, selector, vectors, per_list)
                if len(self._selectors) > 8:
                    self._selectors.popitem(last=False)
            self._selectors.move_to_end(key)
            return self._selectors[key]

    # ----------------------------------------------------------------------------------- search
    def search_vectors(self, vectors: np.ndarray, k: int = 10, filters: Filters | None = None,
                       text: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, positions) of the top ``k`` rows per query vector that match ``filters``;
        positions are -1 where fewer rows match. ``text``: the vectors are text embeddings (searched
        deeper: see ``IndexInfo.text_nprobe``).

        The plan for a filter, by how many rows it keeps: up to ``EXACT_SUBSET_MAX`` are ranked
        exactly from the stored vectors; more go through a FAISS id selector, scanning (IVF) the
        nearest lists until they hold twice as many matching rows as an unfiltered image search
        scores, and at least the query's own depth (text: deeper) grown as 1/sqrt(kept)
        (``faiss_query.filtered_lists``), or (HNSW) with efSearch grown as 1/kept.

        Why the 1/sqrt floor: a text query's neighbours spread over more lists than an image
        query's, so under a wide filter the row count alone stopped too early (1M x 512, PA = 40 %
        of the rows, text depth 160: recall@10 0.949 at 160 lists, 0.975 at 253); under narrow
        filters the row count asks for more lists anyway."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        k = max(1, min(k, len(self.store)))
        if filters is None or filters.is_empty():
            depth = search_depth(self.info, text)
            if self._gpu_index is not None:
                try:
                    return knn(self._gpu_index, self.store, vectors, k, self.info, **depth)
                except Exception:  # a GPU search that FAISS refuses (k/nprobe limits): use the CPU
                    pass
            return knn(self.index, self.store, vectors, k, self.info, **depth)
        positions, selector, subset, per_list = self._filter_state(filters)
        if selector is None:  # small set: exact ranking from the stored vectors
            scores = np.full((len(vectors), k), -np.inf, np.float32)
            pos = np.full((len(vectors), k), -1, np.int64)
            if len(positions):
                sims = vectors @ subset.T
                m = min(k, len(positions))
                top = np.argpartition(-sims, m - 1, axis=1)[:, :m] if m < len(positions) else \
                    np.broadcast_to(np.arange(len(positions)), sims.shape)
                order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
                top = np.take_along_axis(top, order, axis=1)
                scores[:, :m] = np.take_along_axis(sims, top, axis=1)
                pos[:, :m] = positions[top]
            return scores, pos
        fraction = len(positions) / len(self.store)
        depth = search_depth(self.info, text, fraction)
        if per_list is None:
            return knn(self.index, self.store, vectors, k, self.info, selector=selector, **depth)
        wanted = math.ceil(FILTER_ROWS_FACTOR * self.info.nprobe * len(self.store) / len(per_list))
        at_least = math.ceil(depth["nprobe"] / math.sqrt(fraction))
        assign = filtered_lists(self.index, vectors, per_list, wanted, at_least=at_least)
        return knn(self.index, self.store, vectors, k, self.info, selector=selector, assign=assign)

    def search(self, query: str | None = None, image: str | Path | DecodedImage | None = None,
               vector: np.ndarray | None = None,
               k: int = 10, filters: Filters | None = None, per_study: bool = False,
               dedupe: float | None = DEDUPE_COSINE, text: bool | None = None, expand: bool = True) -> list[Hit]:
        """Top-``k`` hits for a text ``query``, an example ``image`` or a query ``vector``.

        ``expand``: a query naming a finding searches with the prompt bank's sentences for it.

        ``per_study``: one hit per study (its best-scoring image; ``views_in_study`` counts the
        study's images among the candidates). ``dedupe``: drop a hit with the same file content
        as a better one, or a cosine >= this to it (None: keep all).
        """
        text = query is not None if text is None else text  # a text embedding passed as ``vector``: text=True
        if vector is None:
            vector = self.embed_query(query, image, expand=expand)
        elif query is not None or image is not None:
            raise WorkspaceError("give one of query, image or vector")
        reports = self.target == "reports"
        depth = k if not (per_study or dedupe) else min(len(self.store), max(4 * k, 50))
        while True:
            scores, positions = self.search_vectors(vector, depth, filters, text=text)
            scores, positions = scores[0], positions[0]
            valid = positions >= 0
            scores, positions = scores[valid], positions[valid]
            keep = self._collapse(positions, per_study, dedupe, k)
            exhausted = len(positions) < depth or depth >= len(self.store)
            if len(keep) >= k or exhausted:
                break
            depth = min(len(self.store), depth * 4)
        rows = self.store.rows(positions[[i for i, _ in keep]])
        hits = []
        for rank, ((i, n_views), row) in enumerate(zip(keep, rows, strict=True), 1):
            hit = _hit(rank, float(scores[i]), row, reports)
            hit.views_in_study = n_views
            hits.append(hit)
        return hits

    def _collapse(self, positions: np.ndarray, per_study: bool, dedupe: float | None, k: int
                  ) -> list[tuple[int, int]]:
        """Indices (into ``positions``, best first) of the hits to show, with views per study.
        Near-duplicates come from one Gram matrix of the candidates (a single small matrix product,
        not one per candidate); the walk stops at ``k`` kept unless ``per_study`` counts views."""
        if not (per_study or dedupe):
            return [(i, 1) for i in range(min(k, len(positions)))]
        studies = self.store.column("study_key")[positions] if per_study else None
        hashes = self.store.column("content_hash")[positions] if dedupe and "content_hash" in \
            self.store.table.column_names else None
        near = None
        if dedupe and len(positions) > 1:
            vecs = self.store.vectors(positions)
            near = (vecs @ vecs.T) >= dedupe
        study_of = [(studies[i] or f"#{positions[i]}") if per_study else "" for i in range(len(positions))]
        keep: list[int] = []
        kept_hashes: set[str] = set()
        views: dict[str, int] = {}
        shown: set[str] = set()  # studies with a kept image
        for i, study in enumerate(study_of):
            if per_study:
                views[study] = views.get(study, 0) + 1
                if study in shown:
                    continue
            if len(keep) >= k:
                if per_study:
                    continue  # still counting the views of the studies shown
                break
            if near is not None and keep:
                if hashes is not None and hashes[i] in kept_hashes:
                    continue
                if near[i, keep].any():
                    continue
            keep.append(i)
            shown.add(study)
            if hashes is not None and hashes[i]:
                kept_hashes.add(hashes[i])
        return [(i, views[study_of[i]] if per_study else 1) for i in keep]

def search(
    query: str | None = None,
    image: str | Path | None = None,
    k: int = 10,
    workspace: str | Path | None = None,
    model: DualEncoder | str | None = None,
    target: str = "images",
    filters: Filters | None = None,
    per_study: bool = False,
    dedupe: float | None = DEDUPE_COSINE,
    expand: bool = True,
) -> list[Hit]:
    """One-shot search (opens the index each call; keep an :class:`Index` for many queries):
    text->image, image->image (``image=``), image->report (``target="reports"``). ``expand=False``
    searches with the query text as typed (no prompt-bank sentences, no side contrast)."""
    if (query is None) == (image is None):
        raise WorkspaceError("give either a text query or --image PATH (not both)")
    index = Index.open(workspace, target, model)
    return index.search(query, image, k=k, filters=filters, per_study=per_study, dedupe=dedupe, expand=expand)
