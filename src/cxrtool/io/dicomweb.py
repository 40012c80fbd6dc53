"""A PACS over DICOMweb: QIDO-RS lists studies -> series -> instances, WADO-RS retrieves them.

Read only: the client only ever sends GET. A source is named ``dicomweb+http://HOST:PORT/PATH``
(or ``dicomweb+https://``) and parsed as a URL, never as a path (a ``Path`` turns ``//`` into
``/``). Credentials come from the environment only, never the URL or the command line, and never
appear in a message: ``CXRTOOL_DICOMWEB_TOKEN`` (an OAuth bearer token) or
``CXRTOOL_DICOMWEB_USER`` + ``CXRTOOL_DICOMWEB_PASSWORD`` (HTTP basic).

HTTP is ``httpx`` (already installed with transformers; thread-safe connection pooling, timeouts)
following PS3.18's query parameters directly, rather than ``dicomweb-client``, whose
``retrieve_instance`` parses the bytes into a pydicom Dataset: cxrtool hashes and decodes the bytes
the server stored, asked for with ``transfer-syntax=*`` (Orthanc's plugin otherwise transcodes to
explicit VR little endian). 429, 5xx and dropped connections are retried with exponential backoff
(``Retry-After`` honoured); a server that stays unreachable, or refuses the credentials (401/403),
ends the run in one line (what was embedded is kept; a re-run continues); any other HTTP error is
the instance's (or study's) own row in the errors table.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cxrtool.errors import CxrError

SCHEMES = ("dicomweb+http", "dicomweb+https")
TOKEN_ENV = "CXRTOOL_DICOMWEB_TOKEN"
USER_ENV = "CXRTOOL_DICOMWEB_USER"
PASSWORD_ENV = "CXRTOOL_DICOMWEB_PASSWORD"
RETRY_STATUS = (429, 500, 502, 503, 504)
PAGE = 1000  # QIDO results per request (limit/offset paging)
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
INSTANCE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
AUTH_HINT = (f"set {TOKEN_ENV} (a bearer token) or {USER_ENV} and {PASSWORD_ENV} (basic) in the environment; "
             "credentials are never taken from the URL or the command line")

# DICOM JSON tags (PS3.18 F.2) read from QIDO answers
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, BODY_PART, SERIES_INSTANCES, STUDY_DATE = "00080060", "00180015", "00201209", "00080020"


class DicomWebError(CxrError):
    """An HTTP answer that is the study's or instance's own problem (404, 400, a 5xx that persisted)."""

    def __init__(self, reason: str, status: int | None = None, hint: str = "") -> None:
        super().__init__(reason, hint)
        self.status = status


class DicomWebUnavailable(CxrError):
    """The server cannot be used at all (unreachable after retries, or refused the credentials): the run stops."""


def is_dicomweb(source: object) -> bool:
    return isinstance(source, str) and source.split("://", 1)[0].lower() in SCHEMES


def parse_source(source: str) -> str:
    """``dicomweb+http(s)://host:port/path`` -> the service's base URL ``http(s)://host:port/path``
    (no trailing slash). A URL carrying credentials is refused: they would end up in shell history,
    process lists and the workspace's records."""
    parts = urlsplit(source)
    if "@" in parts.netloc:  # checked first, and the URL never echoed: it may hold a password
        raise CxrError("the DICOMweb URL carries credentials; they are not taken from a URL", AUTH_HINT)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise CxrError("the DICOMweb source is not a URL of the form dicomweb+http(s)://HOST:PORT/PATH",
                       "e.g. dicomweb+http://127.0.0.1:8042/dicom-web")
    if parts.query or parts.fragment:
        raise CxrError("the DICOMweb URL has a query or fragment; give the service's base URL only",
                       "filters are options: --modality, --body-part, --since, --until, --study")
    scheme = parts.scheme.lower().removeprefix("dicomweb+")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def source_label(base: str) -> str:
    """How a workspace records the source: the ``dicomweb+`` URL, never with credentials."""
    return "dicomweb+" + base


def _auth() -> Any:
    """httpx auth from the environment (token first), or None."""
    import httpx

    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return _bearer(token)
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if user or password:
        return httpx.BasicAuth(user, password)
    return None


def _bearer(token: str) -> Any:
    """An httpx auth that sends ``Authorization: Bearer <token>`` (its repr never shows the token)."""
    import httpx

    class BearerAuth(httpx.Auth):
        def auth_flow(self, request: Any) -> Iterator[Any]:
            request.headers["Authorization"] = f"Bearer {token}"
            yield request

        def __repr__(self) -> str:
            return "BearerAuth(***)"

    return BearerAuth()


def _value(item: dict, tag: str) -> Any:
    """The first value of a DICOM JSON attribute, or None."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """The bodies of a ``multipart/related`` message (RFC 2387, as WADO-RS sends instances)."""
    params = dict(p.strip().split("=", 1) for p in content_type.split(";")[1:] if "=" in p)
    boundary = params.get("boundary", "").strip('"')
    if not boundary:
        raise DicomWebError(f"multipart answer without a boundary ({content_type[:60]})")
    delimiter = b"--" + boundary.encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):  # the closing delimiter
            break
        head, sep, data = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(data[:-2] if data.endswith(b"\r\n") else data)
    return parts


class DicomWebClient:
    """GET-only DICOMweb client: paged QIDO searches and WADO-RS instance retrieval, with retries.

    ``connections`` bounds the pool (and so the downloads in flight); ``timeout`` is per request
    (seconds); ``retries`` counts the retries of one request after 429/5xx or a dropped connection."""

    def __init__(self, base: str, connections: int = 4, timeout: float = 60.0, retries: int = 4,
                 backoff: float = 0.5) -> None:
        import httpx

        from cxrtool import __version__

        self.base = base
        self.retries = retries
        self.backoff = backoff
        self._client = httpx.Client(
            base_url=base + "/", auth=_auth(), timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            headers={"User-Agent": f"cxrtool/{__version__}"}, follow_redirects=False)

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: Any = None, accept: str = "application/dicom+json") -> Any:
        """One GET with retries. Raises DicomWebUnavailable (stop the run) or DicomWebError (this item's)."""
        import httpx

        what = f"{self.base}/{path}"
        for attempt in range(self.retries + 1):
            try:
                response = self._client.get(path, params=params, headers={"Accept": accept})
            except httpx.TransportError as exc:
                if attempt < self.retries:
                    time.sleep(self._delay(attempt, None))
                    continue
                raise DicomWebUnavailable(
                    f"the DICOMweb server at {self.base} did not answer ({type(exc).__name__}: "
                    f"{_short(exc)}) after {self.retries + 1} tries",
                    "check that it is running and reachable; what was embedded is kept, a re-run continues") from None
            status = response.status_code
            if status in RETRY_STATUS and attempt < self.retries:
                time.sleep(self._delay(attempt, response.headers.get("Retry-After")))
                continue
            if 300 <= status < 400:
                raise DicomWebUnavailable(f"the DICOMweb server at {self.base} answered with a redirect "
                                          f"(HTTP {status})",
                                          "give the service's final base URL (e.g. https:// instead of http://)")
            if status in (401, 403):
                raise DicomWebUnavailable(f"the DICOMweb server at {self.base} refused the credentials "
                                          f"(HTTP {status} {response.reason_phrase})", AUTH_HINT)
            if status >= 400:
                raise DicomWebError(f"HTTP {status} {response.reason_phrase} for {what.removeprefix(self.base + '/')}",
                                    status)
            return response
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.strip().isdigit():
            return min(float(retry_after), 30.0)
        return min(self.backoff * 2**attempt, 8.0)

    def search(self, path: str, params: dict | None = None) -> list[dict]:
        """A QIDO-RS search, all pages (``limit``/``offset``); an empty answer (204) is [].

        Paging goes on until a page is empty or brings nothing new: a server that caps its answers
        below ``limit`` (Orthanc's LimitFindResults, a VNA's QIDO maximum) is read to the end, and
        one that ignores ``limit``/``offset`` (answering everything every time) is read once."""
        out: list[dict] = []
        seen: set[str] = set()
        while True:
            page_params = {**(params or {}), "limit": PAGE, "offset": len(out)}
            response = self.get(path, page_params)
            try:
                page = response.json() if response.status_code != 204 and response.content else []
            except ValueError:
                page = None
            if not isinstance(page, list):
                kind = response.headers.get("Content-Type", "?").split(";")[0]
                raise DicomWebError(f"the answer to {path} is not DICOM JSON ({kind})")
            new = []
            for item in page:
                key = json.dumps(item, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    new.append(item)
            out.extend(new)
            if not new or len(page) > PAGE:
                return out

    def retrieve_instance(self, path: str) -> bytes:
        """The instance's Part 10 bytes in its stored transfer syntax (WADO-RS, ``transfer-syntax=*``)."""
        response = self.get(path, accept=INSTANCE_ACCEPT)
        content_type = response.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/"):
            parts = multipart_parts(content_type, response.content)
            if not parts:
                raise DicomWebError(f"an empty multipart answer for {path}")
            return parts[0]
        return response.content


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:120]


# One client per (process, base, connections): decode threads share it (httpx pools are
# thread-safe); a worker process makes its own from the item's strings (items stay picklable).
_CLIENTS: dict[tuple[int, str, int], DicomWebClient] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(base: str, connections: int = 4) -> DicomWebClient:
    key = (os.getpid(), base, connections)
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = DicomWebClient(base, connections)
        return _CLIENTS[key]


@dataclass(frozen=True)
class RemoteInstance:
    """One instance on a DICOMweb server as an embed work item. ``rel`` is its identity in shards
    and the errors table: ``studies/<study>/series/<series>/instances/<sop>`` under the base URL
    (also its WADO-RS path), so resume and validate work as for files."""

    base: str
    rel: str
    connections: int = 4
    kind: str = "dicom"
    problem: str | None = None
    problem_kind: str = "error"

    @property
    def path(self) -> PurePosixPath:
        """A name for messages (no local file exists)."""
        return PurePosixPath(self.rel)

    def read_bytes(self) -> bytes:
        try:
            return client_for(self.base, self.connections).retrieve_instance(self.rel)
        except DicomWebError as exc:
            raise RemoteReadError(exc.reason) from None


class RemoteReadError(OSError):
    """An instance the server would not give (the mapper's read stage lists it with this reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def instance_path(study: str, series: str, sop: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}"


@dataclass
class Listing:
    """What a query found: the instances to embed, studies whose listing failed (as items with a
    problem), and instances the query left out, counted per reason (never downloaded)."""

    items: list[RemoteInstance] = field(default_factory=list)
    filtered: Counter[str] = field(default_factory=Counter)


def study_date_range(since: str | None, until: str | None) -> str | None:
    """QIDO StudyDate range matching ``YYYYMMDD-YYYYMMDD`` (either end open); dates given as
    YYYY-MM-DD or YYYYMMDD."""
    if not since and not until:
        return None
    def norm(d: str | None) -> str:
        if not d:
            return ""
        digits = d.replace("-", "")
        if len(digits) != 8 or not digits.isdigit():
            raise CxrError(f"{d!r} is not a date", "give dates as YYYY-MM-DD (or YYYYMMDD)")
        return digits
    return f"{norm(since)}-{norm(until)}"


def list_instances(client: DicomWebClient, keep: Any, since: str | None = None, until: str | None = None,
                   studies: tuple[str, ...] | None = None, connections: int = 4) -> Listing:
    """Studies (by date range, or the given UIDs) -> series -> instances, filtered by series-level
    Modality and BodyPartExamined with ``keep`` (an :class:`~cxrtool.io.classify.HeaderFilter`)
    before anything is downloaded; the series left out are counted per reason from the server's
    NumberOfSeriesRelatedInstances."""
    listing = Listing()
    if studies:
        if since or until:
            raise CxrError("--study names the studies; --since/--until would be ignored", "give one or the other")
        bad = [uid for uid in studies if not UID.fullmatch(uid)]
        if bad:
            raise CxrError(f"not a DICOM UID: {bad[0][:64]!r}", "a StudyInstanceUID is digits and dots")
        study_uids = list(studies)
    else:
        params: dict[str, Any] = {"includefield": STUDY_DATE}
        dates = study_date_range(since, until)
        if dates:
            params["StudyDate"] = dates
        study_uids = [uid for item in client.search("studies", params) if (uid := _value(item, STUDY_UID))]
    for study in sorted(set(study_uids)):
        try:
            series_list = client.search(f"studies/{study}/series",
                                        {"includefield": [BODY_PART, SERIES_INSTANCES]})
        except DicomWebError as exc:
            listing.items.append(RemoteInstance(client.base, f"studies/{study}", connections, "unknown",
                                                f"the study's series could not be listed ({exc.reason})"))
            continue
        for series_item in series_list:
            series = _value(series_item, SERIES_UID)
            if not series:
                continue
            meta = {"has_pixels": True, "Modality": _value(series_item, MODALITY) or "",
                    "BodyPartExamined": _value(series_item, BODY_PART) or ""}
            reason = keep.skip_reason(meta)
            if reason:
                listing.filtered[reason] += int(_value(series_item, SERIES_INSTANCES) or 0)
                continue
            try:
                instances = client.search(f"studies/{study}/series/{series}/instances")
            except DicomWebError as exc:
                listing.items.append(RemoteInstance(client.base, f"studies/{study}/series/{series}", connections,
                                                    "unknown", f"the series' instances could not be listed "
                                                    f"({exc.reason})"))
                continue
            for inst in instances:
                sop = _value(inst, SOP_UID)
                if sop:
                    listing.items.append(RemoteInstance(client.base, instance_path(study, series, sop), connections))
    listing.items.sort(key=lambda i: i.rel)
    return listing
