"""What the web page can ask of a workspace, without HTTP: search (text, uploaded image, or an
indexed image as the example), an image's metadata and nearest reports, and its rendered
pixels. Images are addressed only by their index id; the archive path of an id comes from the
index, never from a client, and must stay inside the archive folder.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow.compute as pc

from cxrtool.constants import DETAIL_SIDE, SERVE_K_MAX, SERVE_MEMORY_CACHE_MB, THUMB_SIDE
from cxrtool.errors import DecodeError, UnknownIdError, WorkspaceError
from cxrtool.index.filters import Filters
from cxrtool.index.links import Links, viewer_template
from cxrtool.index.search import DEDUPE_COSINE, Hit, Index
from cxrtool.io.decode import DecodedImage
from cxrtool.io.dicomweb import RemoteInstance, RemoteReadError, is_dicomweb
from cxrtool.io.discover import archive_path
from cxrtool.model.dual import DualEncoder
from cxrtool.serve.render import RenderCache, Rendition
from cxrtool.workspace import Workspace

log = logging.getLogger("cxrtool.serve")

# The row fields an image's detail view may show: identifiers of objects, never of people
# (shards hold no names, IDs or birth dates; patient_key is a keyed hash, study_date is present
# only when embed ran with --keep-study-date). A new shard column stays hidden until listed here.
# rows/columns are left out for now: embed records the size of its reduced-resolution decode
# (a 1,955 x 1,841 DICOM shows as 978 x 921), not the stored image size the shard schema promises.
DETAIL_FIELDS = ("path", "study_key", "series_uid", "sop_uid", "view", "modality", "body_part", "file_format",
                 "transfer_syntax", "study_date", "patient_key")
THUMB = Rendition(THUMB_SIDE, "JPEG")
DETAIL = Rendition(DETAIL_SIDE, "PNG")
TEXT_CACHE = 256  # text-query vectors kept: a page re-runs one query as the filters change


def parse_id(value: str | int) -> int:
    """An image/report id as the page sends it (a decimal string: ids are 63-bit, beyond what a
    JavaScript number holds exactly). Anything else - a path, say - is refused."""
    text = str(value).strip()
    if not text.isdecimal() or len(text) > 19 or int(text) >= 1 << 63:
        raise WorkspaceError(f"{text[:80]!r} is not an image id", "images are addressed by the ids search returns")
    return int(text)


class SearchService:
    """One workspace's image index (and report index, when ``embed-reports`` made one), opened
    once and searched from many threads."""

    def __init__(self, workspace: str | Path | None = None, model: DualEncoder | str | None = None,
                 archive: str | Path | None = None, device: str = "cpu", cache: bool = True,
                 memory_cache_mb: int = SERVE_MEMORY_CACHE_MB, viewer_url: str | None = None) -> None:
        self.images = Index.open(workspace, "images", model, device)
        self.workspace: Workspace = self.images.workspace
        # reports are always searched by a vector (the query embedded by the image index's model)
        self.reports = self._open_reports(model)
        info = self.workspace.read_json(self.workspace.embed_info) or {}
        recorded = str(archive or info.get("archive") or ".")
        self.remote = is_dicomweb(recorded)  # a DICOMweb workspace: images are retrieved from the server
        self.archive = Path(recorded).expanduser() if not self.remote else Path(".")
        self.links = Links(recorded if self.remote else str(self.archive), viewer_template(viewer_url))
        self.renders = RenderCache(self.workspace.serve_cache if cache else None, memory_cache_mb << 20)
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self._texts_lock = threading.Lock()
        self._description: dict | None = None

    def _open_reports(self, model: DualEncoder | str | None) -> Index | None:
        """The report index, if `cxrtool index --target reports` built one (serve never builds)."""
        from cxrtool.index.info import generations

        report_shards, report_index = self.workspace.collection("reports")
        if generations(report_index):
            return Index.open(self.workspace.root, "reports", model)
        if any(report_shards.glob("*.parquet")):
            log.warning("report shards are not indexed yet: run `cxrtool index --target reports` to search them")
        return None

    def warm(self) -> None:
        """Load the model now (a first query would otherwise wait for it)."""
        self._text_vector("chest x-ray")

    # ----------------------------------------------------------------------------------- facts
    def describe(self) -> dict:
        """Counts and the filter values present, for the page's controls (computed once: the
        index does not change while it is served)."""
        if self._description is None:
            self._description = self._describe()
        return self._description

    def _describe(self) -> dict:
        table = self.images.store.table

        def values(column: str) -> list[dict]:
            if column not in table.column_names:
                return []
            counts = pc.value_counts(pc.fill_null(table.column(column), "")).to_pylist()
            return sorted(({"value": c["values"], "count": c["counts"]} for c in counts if c["values"]),
                          key=lambda c: (-c["count"], c["value"]))

        dates = table.column("study_date") if "study_date" in table.column_names else None
        has_dates = dates is not None and dates.null_count < len(dates)
        info = self.images.info
        return {
            "images": len(self.images), "reports": len(self.reports) if self.reports else 0,
            "index": {"kind": info.kind, "recall_at_10": info.recall_at_10, "model": info.model_fingerprint[:19]},
            "views": values("view"), "modalities": values("modality"),
            "dates": {"from": pc.min(dates).as_py(), "to": pc.max(dates).as_py()} if has_dates else None,
            "k_max": SERVE_K_MAX,
        }

    # ---------------------------------------------------------------------------------- search
    def search(self, query: str | None = None, image: DecodedImage | None = None, like: int | None = None,
               target: str = "images", k: int = 10, filters: Filters | None = None,
               per_study: bool = False, dedupe: float | None = DEDUPE_COSINE) -> list[Hit]:
        """Top-``k`` of ``target`` ("images" or "reports") for exactly one of a text ``query``, a
        decoded ``image`` (an upload) or ``like`` (an indexed image's id: its stored vector);
        ``per_study`` and ``dedupe`` as in :meth:`Index.search`."""
        if sum(x is not None for x in (query, image, like)) != 1:
            raise WorkspaceError("give one of a text query, an image or an image id to search by")
        if query is not None and not query.strip():
            raise WorkspaceError("the query is empty", "type what you look for, e.g. left pleural effusion")
        if not 1 <= k <= SERVE_K_MAX:
            raise WorkspaceError(f"k={k} is out of range", f"ask for 1 to {SERVE_K_MAX} results")
        index = self._collection(target)
        if query is not None:
            vector, text = self._text_vector(query.strip()), True
        elif image is not None:
            vector, text = self.images.embed_query(image=image), False
        else:
            vector, text = self.images.store.vectors(np.array([self._position(like)]))[0], False
        hits = index.search(vector=vector, k=k, filters=filters, per_study=per_study, dedupe=dedupe, text=text)
        return self.links.fill(hits) if target == "images" else hits

    def nearest_reports(self, image_id: int, k: int = 5, dedupe: float | None = DEDUPE_COSINE) -> list[Hit]:
        """The report index's nearest reports to an indexed image (image -> report); by default
        near-identical texts (boilerplate normal reports) are shown once."""
        return self.search(like=image_id, target="reports", k=k, dedupe=dedupe)

    def _collection(self, target: str) -> Index:
        if target == "images":
            return self.images
        if target == "reports":
            if self.reports is None:
                raise WorkspaceError(f"the workspace {self.workspace.root} has no report index",
                                     "add one with `cxrtool embed-reports REPORTS.csv`")
            return self.reports
        raise WorkspaceError(f"unknown search target {target!r}", "use images or reports")

    def _text_vector(self, query: str) -> np.ndarray:
        with self._texts_lock:
            if query in self._texts:
                self._texts.move_to_end(query)
                return self._texts[query]
        vector = self.images.embed_query(query)
        with self._texts_lock:
            self._texts[query] = vector
            if len(self._texts) > TEXT_CACHE:
                self._texts.popitem(last=False)
        return vector

    # ---------------------------------------------------------------------------------- images
    def _position(self, image_id: int) -> int:
        position = int(self.images.store.positions(np.array([image_id]))[0])
        if position < 0:
            raise UnknownIdError(f"no image with id {image_id} in the index")
        return position

    def _row(self, image_id: int) -> dict:
        return self.images.store.rows(np.array([self._position(image_id)]))[0]

    def detail(self, image_id: int) -> dict:
        """The PHI-safe fields of an indexed image (``DETAIL_FIELDS``), empty ones left out."""
        row = self._row(image_id)
        return {name: row[name] for name in DETAIL_FIELDS if row.get(name) not in (None, "")}

    def source(self, image_id: int, row: dict | None = None) -> Path | RemoteInstance:
        """The archive file behind an id (or, for a DICOMweb workspace, its instance on the server).
        The path comes from the index; one that is absolute or climbs out of the archive (a
        hand-edited shard) is refused, so no id reads other files."""
        rel = str((row or self._row(image_id)).get("path") or "")
        parts = PurePosixPath(rel.replace("\\", "/")).parts
        if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]:
            raise UnknownIdError(f"image {image_id} has a path outside the archive; it is not served")
        if self.remote:
            if parts[0] != "studies" or len(parts) != 6:
                raise UnknownIdError(f"image {image_id} has no DICOMweb instance path; it is not served")
            return RemoteInstance(self.links.base, "/".join(parts))
        file = archive_path(self.archive, "/".join(parts))
        if not file.is_file():
            raise UnknownIdError(f"the file of image {image_id} ({rel}) is no longer in the archive",
                                 "start serve with --archive pointing at the archive's current place")
        return file

    def rendered(self, image_id: int, rendition: Rendition) -> bytes:
        """The image at ``rendition`` (THUMB or DETAIL), rendered once and cached."""
        row = self._row(image_id)
        file = self.source(image_id, row)
        digest = (row.get("content_hash") or "").split(":")[-1][:16] or "nohash"
        key = f"{image_id:016x}-{digest}-{rendition.side}{rendition.suffix}"
        try:
            return self.renders.get_or_render(key, file, rendition)
        except DecodeError as exc:  # changed on disk since embedding
            raise UnknownIdError(f"image {image_id} can no longer be decoded: {exc.short_reason}") from None
        except RemoteReadError as exc:  # gone from the server since embedding
            raise UnknownIdError(f"image {image_id} cannot be retrieved: {exc.reason}") from None
