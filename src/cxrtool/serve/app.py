"""The HTTP layer of `cxrtool serve`: a FastAPI app over :class:`SearchService`, plus one
self-contained page (``static/``: no CDN, so it works behind a hospital firewall).

Searches and image rendering run in bounded thread pools (``anyio.to_thread``), so the event loop
keeps answering while a query runs. Errors are JSON ``{"error": reason, "hint": hint}`` with
400 (bad input), 404 (no such id or file), 413 (upload too large) or 500.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrtool import __version__
from cxrtool.constants import SERVE_HOST, SERVE_K_MAX, SERVE_MAX_UPLOAD_MB, SERVE_PORT
from cxrtool.errors import CxrError, DecodeError, UnknownIdError
from cxrtool.index.filters import Filters
from cxrtool.index.query import side_caveat
from cxrtool.index.search import DEDUPE_COSINE, Hit
from cxrtool.io.decode import decode_bytes
from cxrtool.model.dual import DualEncoder
from cxrtool.serve.service import DETAIL, THUMB, SearchService, parse_id

log = logging.getLogger("cxrtool.serve")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
STATIC = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# The page loads only its own files: no inline script, no third-party origin, no framing.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class TooLarge(CxrError):
    """An upload over the limit (answered 413)."""


# ----------------------------------------------------------------------------------- response models
class ImageHit(BaseModel):
    rank: int
    score: float
    id: str  # decimal: ids are 63-bit, more than a JavaScript number holds exactly
    path: str
    study_key: str
    view: str
    modality: str
    body_part: str
    study_date: str
    views_in_study: int
    thumb: str
    image: str
    retrieve_url: str = ""  # the WADO-RS URL (DICOMweb) or file path of the source
    viewer_url: str = ""  # from the viewer URL template, if one is set


class ReportHit(BaseModel):
    rank: int
    score: float
    id: str
    report_key: str
    study_key: str
    text: str


class SearchResult(BaseModel):
    target: Literal["images", "reports"]
    took_ms: float
    note: str | None = None  # e.g. the model's side for the queried finding is not reliable
    images: list[ImageHit] = []
    reports: list[ReportHit] = []


class ImageDetail(BaseModel):
    id: str
    fields: dict[str, str | int]
    thumb: str
    image: str


class ErrorBody(BaseModel):
    error: str
    hint: str = ""


def _image_hit(h: Hit) -> ImageHit:
    return ImageHit(rank=h.rank, score=h.score, id=str(h.id), path=h.path, study_key=h.study_key, view=h.view,
                    modality=h.modality, body_part=h.body_part, study_date=h.study_date,
                    views_in_study=h.views_in_study, thumb=f"/api/images/{h.id}/thumb",
                    image=f"/api/images/{h.id}/image", retrieve_url=h.retrieve_url, viewer_url=h.viewer_url)


def _report_hit(h: Hit) -> ReportHit:
    return ReportHit(rank=h.rank, score=h.score, id=str(h.id), report_key=h.path, study_key=h.study_key, text=h.text)


@dataclass
class SearchOptions:
    """The query parameters every search shares (text, upload, more-like-this)."""

    target: str
    k: int
    filters: Filters
    per_study: bool
    dedupe: float | None


def search_options(
    target: Literal["images", "reports"] = Query("images", description="What to rank: images, or reports "
                                                 "(needs `cxrtool embed-reports`)."),
    k: int = Query(20, ge=1, le=SERVE_K_MAX, description="Number of results."),
    view: list[str] = Query([], description="Only these view positions (PA, AP, LL...); repeat for several."),
    modality: list[str] = Query([], description="Only these modalities (CR, DX...)."),
    date_from: str | None = Query(None, description="Study date on or after (YYYY-MM-DD; needs embed "
                                  "--keep-study-date)."),
    date_to: str | None = Query(None, description="Study date on or before."),
    per_study: bool = Query(False, description="One result per study (its best image)."),
    dedupe: float = Query(DEDUPE_COSINE, ge=0, le=1, description="Hide results with cosine >= this to a better one "
                          "(same-content copies always); 0 keeps all."),
) -> SearchOptions:
    filters = Filters(views=tuple(view), modalities=tuple(modality), date_from=date_from, date_to=date_to)
    return SearchOptions(target, k, filters, per_study, dedupe or None)


# ------------------------------------------------------------------------------------------ the app
def create_app(workspace: str | Path | None = None, model: DualEncoder | str | None = None,
               archive: str | Path | None = None, device: str = "cpu", max_upload_mb: float = SERVE_MAX_UPLOAD_MB,
               cache: bool = True, host: str = SERVE_HOST, search_threads: int = 2,
               render_threads: int = 2, viewer_url: str | None = None) -> FastAPI:
    """The ASGI app for ``workspace``: opens (and if needed builds) its index now, so a broken
    workspace fails at start, not at the first query. ``host``: where it will listen; on a
    loopback address requests must name a loopback host (blocks DNS-rebinding pages)."""
    service = SearchService(workspace, model, archive, device, cache, viewer_url=viewer_url)
    max_upload = int(max_upload_mb * (1 << 20))
    searches, renders = anyio.CapacityLimiter(search_threads), anyio.CapacityLimiter(render_threads)
    app = FastAPI(title="cxrtool serve", version=__version__, docs_url=None, redoc_url=None,
                  description="Search a chest X-ray workspace by text or example image. Images are addressed by "
                              "index id only; no patient names, IDs or birth dates are ever returned.")
    app.state.service = service
    app.add_middleware(GuardMiddleware, loopback_only=is_loopback(host))
    _add_error_handlers(app)
    page = resources.files("cxrtool.serve") / "static"

    def in_thread(fn, *args):
        return anyio.to_thread.run_sync(lambda: fn(*args), limiter=searches)

    @app.get("/", include_in_schema=False)
    async def index_page() -> Response:
        return Response((page / "index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in STATIC:  # a fixed list: nothing else under the package (or elsewhere) is served
            raise StarletteHTTPException(404)
        return Response((page / name).read_bytes(), media_type=STATIC[name], headers={"cache-control": "no-cache"})

    @app.get("/api/health", tags=["meta"])
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/api/info", tags=["meta"])
    async def info() -> dict:
        """Collection sizes, index kind and the filter values present (views, modalities, date range)."""
        facts = await anyio.to_thread.run_sync(service.describe)  # not behind queued searches
        return {**facts, "max_upload_bytes": max_upload, "version": __version__}

    @app.get("/api/search", response_model=SearchResult, tags=["search"],
             responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def search(q: str | None = Query(None, max_length=1000, description="Text query (text -> image/report)."),
                     like: str | None = Query(None, description="An image id: find images or reports like it."),
                     opts: SearchOptions = Depends(search_options)) -> SearchResult:
        """Search by a text query ``q`` or by an indexed image ``like`` (give one)."""
        like_id = parse_id(like) if like is not None else None
        note = side_caveat(service.images.model.card, q) if q and opts.target == "images" else None
        return await _run_search(lambda: service.search(q, None, like_id, opts.target, opts.k, opts.filters,
                                                        opts.per_study, opts.dedupe), opts.target, note)

    @app.post("/api/search/image", response_model=SearchResult, tags=["search"],
              responses={400: {"model": ErrorBody}, 413: {"model": ErrorBody}},
              openapi_extra={"requestBody": {"required": True, "description": "The image file's bytes (DICOM, PNG, "
                             "JPEG, TIFF), sent as the raw body. Decoded in memory, never stored.", "content": {
                                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_image(request: Request, name: str = Query("upload", max_length=255,
                                                               description="The file's name (only labels errors)."),
                           opts: SearchOptions = Depends(search_options)) -> SearchResult:
        """Search by an example image (image -> image, or image -> report with ``target=reports``)."""
        data = await _read_body(request, max_upload)
        label = Path(name).name or "upload"

        def go() -> list[Hit]:
            decoded = decode_bytes(data, label, min_side=service.images.model.card.image.decode_side)
            return service.search(image=decoded, target=opts.target, k=opts.k, filters=opts.filters,
                                  per_study=opts.per_study, dedupe=opts.dedupe)

        return await _run_search(go, opts.target)

    async def _run_search(fn, target: str, note: str | None = None) -> SearchResult:
        t0 = time.perf_counter()
        hits = await in_thread(fn)
        took = round((time.perf_counter() - t0) * 1000, 1)
        if target == "reports":
            return SearchResult(target="reports", took_ms=took, note=note, reports=[_report_hit(h) for h in hits])
        return SearchResult(target="images", took_ms=took, note=note, images=[_image_hit(h) for h in hits])

    @app.get("/api/images/{image_id}", response_model=ImageDetail, tags=["images"],
             responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def image_detail(image_id: str) -> ImageDetail:
        """An indexed image's metadata: identifiers of objects (UIDs, view, modality...), never of people."""
        i = parse_id(image_id)
        fields = await in_thread(service.detail, i)
        return ImageDetail(id=str(i), fields=fields, thumb=f"/api/images/{i}/thumb", image=f"/api/images/{i}/image")

    @app.get("/api/images/{image_id}/reports", response_model=list[ReportHit], tags=["images"],
             responses={400: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def image_reports(image_id: str, k: int = Query(5, ge=1, le=50),
                            dedupe: float = Query(DEDUPE_COSINE, ge=0, le=1, description="As for /api/search.")
                            ) -> list[ReportHit]:
        """The nearest reports of the report index to an indexed image."""
        hits = await in_thread(service.nearest_reports, parse_id(image_id), k, dedupe or None)
        return [_report_hit(h) for h in hits]

    for suffix, rendition, doc in (("thumb", THUMB, "A JPEG thumbnail (longest side 256 px)."),
                                   ("image", DETAIL, "A larger PNG (longest side 1,024 px), windowed as embedded.")):
        _add_image_route(app, suffix, rendition, doc, service, renders)
    return app


def _add_image_route(app: FastAPI, suffix: str, rendition, doc: str, service: SearchService,
                     limiter: anyio.CapacityLimiter) -> None:
    async def rendered(image_id: str) -> Response:
        data = await anyio.to_thread.run_sync(service.rendered, parse_id(image_id), rendition, limiter=limiter)
        return Response(data, media_type=rendition.media_type, headers={"cache-control": "private, max-age=3600"})

    rendered.__doc__ = doc
    app.get(f"/api/images/{{image_id}}/{suffix}", tags=["images"], response_class=Response,
            responses={200: {"content": {rendition.media_type: {}}}, 404: {"model": ErrorBody}},
            name=f"image_{suffix}")(rendered)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit``, before it is all read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdecimal() and int(declared) > limit:
        raise TooLarge(f"the upload is {int(declared) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB",
                       "start serve with a larger --max-upload-mb")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the upload is over the {limit / 2**20:.0f} MB limit",
                           "start serve with a larger --max-upload-mb")
        chunks.append(chunk)
    if not size:
        raise DecodeError("upload", "empty upload", "send the image file's bytes as the request body")
    return b"".join(chunks)


def _add_error_handlers(app: FastAPI) -> None:
    def body(status: int, reason: str, hint: str = "") -> JSONResponse:
        return JSONResponse({"error": reason, "hint": hint}, status_code=status)

    @app.exception_handler(CxrError)
    async def cxr_error(_: Request, exc: CxrError) -> JSONResponse:
        status = 404 if isinstance(exc, UnknownIdError) else 413 if isinstance(exc, TooLarge) else 400
        reason = f"{Path(exc.path).name}: {exc.short_reason}" if isinstance(exc, DecodeError) else exc.reason
        return body(status, reason, exc.hint)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path"))
        return body(400, f"bad parameter {where}: {first.get('msg', 'invalid')}".strip())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return body(exc.status_code, "not found" if exc.status_code == 404 else str(exc.detail))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return body(500, f"internal error ({type(exc).__name__})", "see the server's log; run with --debug for more")


# -------------------------------------------------------------------------------------- the guard
def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class GuardMiddleware:
    """Security headers on every answer; on a loopback bind, refuses requests whose Host is not a
    loopback name (a web page that rebinds its own DNS name to 127.0.0.1 cannot read the API)."""

    def __init__(self, app, loopback_only: bool = True) -> None:
        self.app, self.loopback_only = app, loopback_only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.loopback_only:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]")[0]
            if not is_loopback(name):
                response = JSONResponse({"error": f"host {host!r} refused: this server answers loopback names only",
                                         "hint": "open http://127.0.0.1:PORT/, or start serve with --host"},
                                        status_code=400)
                return await response(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


def run_server(app: FastAPI, host: str = SERVE_HOST, port: int = SERVE_PORT, access_log: bool = False) -> None:
    """Load the model, then serve ``app`` (from :func:`create_app`) until interrupted. The access
    log is off by default: it would record every text query, and a user may type a name into one."""
    import uvicorn

    app.state.service.warm()
    if not is_loopback(host):
        log.warning("serving on %s: anyone who can reach this machine on port %d can search the archive and see "
                    "its images; use the default --host 127.0.0.1 unless that is intended", host, port)
    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level="warning")
