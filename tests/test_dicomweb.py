"""Embedding straight from a PACS over DICOMweb, against a real Orthanc (Debian's orthanc +
orthanc-dicomweb, started per test module on a free loopback port; tests/orthanc.py).

The sample archive's DICOMs are uploaded through Orthanc's REST API: 11 CR images (chest, hip,
extremity; JPEG 2000, JPEG lossless, RLE, ...) and one SR. Downloads are counted by wrapping the
real client's retrieval (every byte still comes from the server)."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest

from cxrtool.embed.errors_log import read_errors
from cxrtool.embed.pipeline import embed_archive
from cxrtool.embed.shards import read_shard_metadata
from cxrtool.embed.validate import validate_workspace
from cxrtool.io import dicomweb
from cxrtool.io.dicomweb import DicomWebClient, DicomWebUnavailable

from .conftest import ARCHIVE
from .orthanc import Orthanc, dicom_copy, skip_without_orthanc
from .test_integrity import cli, one_line_error

PACS = sorted(p for p in (ARCHIVE / "pacs").rglob("*") if p.is_file())
SR = "modality SR not in CR,DX"


@pytest.fixture(scope="module")
def orthanc(module_tmp):
    skip_without_orthanc()
    server = Orthanc(module_tmp.mktemp("orthanc")).start()
    server.upload_files(PACS)
    yield server
    server.stop()


@pytest.fixture
def downloads(monkeypatch):
    """How many instances were retrieved (the real client, counted)."""
    counter = {"n": 0}
    real = DicomWebClient.retrieve_instance

    def counted(self, path):
        counter["n"] += 1
        return real(self, path)

    monkeypatch.setattr(DicomWebClient, "retrieve_instance", counted)
    return counter


def _embed(source, ws, model, **kw):
    return embed_archive(source, ws, model, progress=False, **kw)


def _paths(ws: Path) -> list[str]:
    return read_shard_metadata(ws / "shards", ["path"]).column("path").to_pylist()


def test_full_sync_then_nothing_then_exactly_the_new_instance(orthanc, tmp_path, tiny_model, downloads):
    before = orthanc.count_instances()
    ws = tmp_path / "ws"
    s = _embed(orthanc.source, ws, tiny_model, connections=4)
    assert s.embedded == 11 and s.failed == 0 and s.filtered == {SR: 1} and downloads["n"] == 11
    rows = read_shard_metadata(ws / "shards", ["path", "study_key", "series_uid", "sop_uid", "modality"]).to_pylist()
    assert all(r["path"] == f"studies/{r['study_key']}/series/{r['series_uid']}/instances/{r['sop_uid']}"
               for r in rows) and {r["modality"] for r in rows} == {"CR"}
    assert read_errors(ws) == []  # what the query left out is counted, not written as error rows

    downloads["n"] = 0
    again = _embed(orthanc.source, ws, tiny_model)
    assert again.embedded == 0 and again.already_done == 11 and downloads["n"] == 0

    orthanc.upload(dicom_copy(PACS[0], seed=1))
    third = _embed(orthanc.source, ws, tiny_model)
    assert third.embedded == 1 and downloads["n"] == 1
    assert len(_paths(ws)) == len(set(_paths(ws))) == 12
    assert validate_workspace(orthanc.source, ws).ok
    orthanc.upload(dicom_copy(PACS[1], seed=2))  # on the server, not yet embedded
    report = validate_workspace(orthanc.source, ws)
    assert not report.ok and len(report.missing) == 1 and report.missing[0].startswith("studies/")
    assert orthanc.count_instances() == before + 2  # only the test's own uploads: cxrtool never writes


def test_since_fetches_only_the_new_studies(orthanc, tmp_path, tiny_model, downloads):
    for seed in (10, 11):
        orthanc.upload(dicom_copy(PACS[0], study_date="20261201", seed=seed))
    s = _embed(orthanc.source, tmp_path / "ws", tiny_model, since="2026-11-30")
    assert s.embedded == 2 and downloads["n"] == 2 and s.filtered == {}
    none = _embed(orthanc.source, tmp_path / "ws2", tiny_model, since="2026-12-02")
    assert none.found == 0 and downloads["n"] == 2


def test_a_study_list_and_the_chest_filter_are_applied_before_download(orthanc, tmp_path, tiny_model, downloads):
    from cxrtool.io.classify import HeaderFilter

    s = _embed(orthanc.source, tmp_path / "ws", tiny_model, header_filter=HeaderFilter(body_parts=("CHEST",)))
    assert s.embedded == downloads["n"] and s.filtered.get("body part HIP not in CHEST") == 2
    assert s.filtered.get("body part EXTREMITY not in CHEST") == 7


def _embedded_and_indexed(orthanc, ws: Path, model_dir: Path) -> None:
    from cxrtool.index import build_index
    from cxrtool.model import load_model

    model = load_model(str(model_dir))  # its origin recorded, as the CLI would
    _embed(orthanc.source, ws, model)
    build_index(ws, model=model)


def test_the_wado_rs_url_of_a_hit_returns_that_instance(orthanc, tmp_path, tiny_model_dir):
    import io

    import httpx
    import pydicom

    ws = tmp_path / "ws"
    _embedded_and_indexed(orthanc, ws, tiny_model_dir)
    proc = cli("search", "pleural effusion", "--workspace", str(ws), "-k", "3", "--dedupe", "0", "--json",
               "--viewer-url", "http://viewer.example/ohif?StudyInstanceUIDs={study_uid}")
    hits = json.loads(proc.stdout)
    assert len(hits) == 3
    for hit in hits:
        assert hit["retrieve_url"] == f"{orthanc.url}/dicom-web/{hit['path']}"
        assert hit["viewer_url"] == f"http://viewer.example/ohif?StudyInstanceUIDs={hit['study_key']}"
        r = httpx.get(hit["retrieve_url"], headers={"Accept": dicomweb.INSTANCE_ACCEPT})
        part = dicomweb.multipart_parts(r.headers["Content-Type"], r.content)[0]
        assert pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID == hit["sop_uid"]
    csv_out = cli("search", "pleural effusion", "--workspace", str(ws), "-k", "1", "--csv").stdout
    assert "retrieve_url" in csv_out.splitlines()[0] and f"{orthanc.url}/dicom-web/studies/" in csv_out


def test_the_server_stopping_mid_run_is_one_line_and_the_rerun_completes(tmp_path, tiny_model, monkeypatch):
    skip_without_orthanc()
    server = Orthanc(tmp_path / "orthanc").start()
    try:
        server.upload_files(PACS)
        real, calls = DicomWebClient.retrieve_instance, {"n": 0}

        def stop_after_five(self, path):
            calls["n"] += 1
            if calls["n"] == 6:
                server.stop()
            return real(self, path)

        monkeypatch.setattr(DicomWebClient, "retrieve_instance", stop_after_five)
        monkeypatch.setattr(DicomWebClient, "_delay", lambda self, attempt, retry_after: 0.05)
        ws = tmp_path / "ws"
        with pytest.raises(DicomWebUnavailable) as info:
            _embed(server.source, ws, tiny_model, shard_rows=2, connections=1, batch_size=1)
        assert "did not answer" in info.value.reason and "\n" not in info.value.reason
        kept = _paths(ws)
        assert 0 < len(kept) <= 5
        server.start()
        monkeypatch.setattr(DicomWebClient, "retrieve_instance", real)
        dicomweb._CLIENTS.clear()
        s = _embed(server.source, ws, tiny_model, shard_rows=2)
        paths = _paths(ws)
        assert s.embedded == 11 - len(kept) and len(paths) == len(set(paths)) == 11
        assert validate_workspace(server.source, ws).ok
    finally:
        server.stop()


def test_credentials_from_the_environment_only_and_never_written(tmp_path, tiny_model_dir):
    skip_without_orthanc()
    password = "pw-7d1c93e0a5"
    server = Orthanc(tmp_path / "orthanc", users={"reader": password}).start()
    try:
        server.upload_files([p for p in PACS if not p.name.startswith("SR")][:3])
        ws = tmp_path / "ws"
        wrong = cli("embed", server.source, "--workspace", str(ws), "--model", str(tiny_model_dir),
                    env={"CXRTOOL_DICOMWEB_USER": "reader", "CXRTOOL_DICOMWEB_PASSWORD": "not-it"})
        one_line_error(wrong, "HTTP 401")
        in_url = cli("embed", server.source.replace("http://", f"http://reader:{password}@"), "--workspace",
                     str(ws), "--model", str(tiny_model_dir))
        one_line_error(in_url, "carries credentials")
        assert password not in in_url.stderr + in_url.stdout
        right = cli("embed", server.source, "--workspace", str(ws), "--model", str(tiny_model_dir), "--json",
                    env={"CXRTOOL_DICOMWEB_USER": "reader", "CXRTOOL_DICOMWEB_PASSWORD": password})
        assert right.returncode == 0 and json.loads(right.stdout)["embedded"] == 3, right.stderr
        for proc in (wrong, right):
            assert password not in proc.stdout + proc.stderr
        for f in ws.rglob("*"):
            if f.is_file():
                assert password.encode() not in f.read_bytes(), f
    finally:
        server.stop()


class _TokenServer(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP server that answers QIDO with [] only for the right bearer token."""

    seen: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        auth = self.headers.get("Authorization", "")
        type(self).seen.append(auth)
        ok = auth == "Bearer tok-123"
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        self.wfile.write(b"[]" if ok else b"")

    def log_message(self, *args):
        pass


def test_a_bearer_token_is_sent_as_an_authorization_header(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        monkeypatch.setenv(dicomweb.TOKEN_ENV, "tok-123")
        assert DicomWebClient(base).search("studies") == []
        monkeypatch.setenv(dicomweb.TOKEN_ENV, "wrong")
        with pytest.raises(DicomWebUnavailable, match="HTTP 401"):
            DicomWebClient(base).search("studies")
        assert _TokenServer.seen[:2] == ["Bearer tok-123", "Bearer wrong"]
    finally:
        server.shutdown()


def test_the_source_is_parsed_as_a_url():
    assert dicomweb.parse_source("dicomweb+https://pacs.example.org:8443/dicom-web/") == \
        "https://pacs.example.org:8443/dicom-web"
    for bad in ("dicomweb+http:///dicom-web", "dicomweb+http://h/x?StudyDate=2020", "dicomweb+ftp://h/x"):
        with pytest.raises(Exception):  # noqa: B017 - CxrError with a hint
            dicomweb.parse_source(bad)
    assert dicomweb.study_date_range("2026-01-02", None) == "20260102-"


def test_the_page_shows_thumbnails_from_the_pacs_and_links_each_hit_back(orthanc, tmp_path, tiny_model,
                                                                         tiny_model_dir, browser):
    """A DICOMweb workspace served: thumbnails are rendered from instances retrieved from the
    server, the API gives each hit its WADO-RS URL, and the detail view links to the viewer."""
    import httpx

    from cxrtool.serve import create_app

    from .serve_helpers import serving
    from .test_serve_browser import LOADED

    ws = tmp_path / "ws"
    _embedded_and_indexed(orthanc, ws, tiny_model_dir)
    viewer = "http://viewer.example/ohif?StudyInstanceUIDs={study_uid}"
    with serving(create_app(ws, model=tiny_model, viewer_url=viewer)) as base:
        found = httpx.get(f"{base}/api/search", params={"q": "pleural effusion", "k": 20, "dedupe": 0}).json()
        assert all(h["retrieve_url"] == f"{orthanc.url}/dicom-web/{h['path']}" for h in found["images"])
        page = browser.new_page()
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
        page.uncheck("#dedupe")
        page.fill("#q", "pleural effusion")
        page.press("#q", "Enter")
        page.wait_for_function(LOADED)  # every thumbnail decoded from a WADO-RS retrieval
        card = page.locator(".card").first
        study = {h["id"]: h["study_key"] for h in found["images"]}[card.get_attribute("data-id")]
        card.click()
        link = page.locator("#detail-link")
        link.wait_for(state="visible")
        assert link.get_attribute("href") == viewer.format(study_uid=study)
        assert link.inner_text() == "open in viewer"
        page.close()


class _FlakyPacs(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP server answering just enough QIDO for two studies: one whose series
    listing fails every time (500), one answered after two 503s (the second with Retry-After)."""

    calls: dict[str, int] = {}

    def _json(self, status: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split("?")[0]
        n = type(self).calls[path] = type(self).calls.get(path, 0) + 1
        if path == "/dicom-web/studies":
            return self._json(200, [{"0020000D": {"vr": "UI", "Value": [uid]}} for uid in ("1.2.3", "1.2.4")])
        if path == "/dicom-web/studies/1.2.3/series":
            return self._json(500, {})
        if path == "/dicom-web/studies/1.2.4/series":
            if n <= 2:
                return self._json(503, {}, {"Retry-After": "0"} if n == 2 else None)
            return self._json(200, [])
        return self._json(404, {})

    def log_message(self, *args):
        pass


def test_retries_then_a_study_that_keeps_failing_is_an_error_row_with_its_status(tmp_path, tiny_model, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyPacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(DicomWebClient, "_delay", lambda self, attempt, retry_after: 0.01)
    try:
        source = f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"
        s = _embed(source, tmp_path / "ws", tiny_model)
        assert s.failed == 1 and s.embedded == 0
        (row,) = read_errors(tmp_path / "ws")
        assert row["path"] == "studies/1.2.3" and "HTTP 500" in row["reason"]
        assert _FlakyPacs.calls["/dicom-web/studies/1.2.3/series"] == 5  # the first try and 4 retries
        assert _FlakyPacs.calls["/dicom-web/studies/1.2.4/series"] == 3  # answered on the third try
    finally:
        server.shutdown()


def test_at_most_batch_times_connections_items_are_in_flight():
    """Memory stays bounded: the Threads distributor never holds more than batch x connections
    decoded items beyond the batch being handed out."""
    import time

    from cxrtool.embed.distributors import Threads

    lock, state = threading.Lock(), {"alive": 0, "peak": 0}
    handed = []

    def decode(i):
        with lock:
            state["alive"] += 1
            state["peak"] = max(state["peak"], state["alive"])
        time.sleep(0.002)
        return i

    for batch in Threads(connections=3).decoded(list(range(200)), decode, batch_size=4):
        with lock:
            state["alive"] -= len(batch)  # consumed: the caller holds these now
        handed.extend(batch)
    assert handed == list(range(200))  # in item order
    assert state["peak"] <= 4 * 3 + 4


class _PagingPacs(http.server.BaseHTTPRequestHandler):
    """QIDO for 5 studies, paged the way real servers misbehave: ``cap`` answers at most 2 per
    request whatever the limit (a VNA's maximum); ``ignore`` answers all 5 every time."""

    mode = "cap"

    def do_GET(self):  # noqa: N802 - http.server's name
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        uids = [f"1.2.{i}" for i in range(5)]
        if parts.path == "/dicom-web/studies":
            offset = int(query.get("offset", ["0"])[0])
            page = uids[offset: offset + 2] if type(self).mode == "cap" else uids
        else:
            page = []
        body = json.dumps([{"0020000D": {"vr": "UI", "Value": [u]}} for u in page]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("mode", ["cap", "ignore"])
def test_paging_reads_a_capped_server_to_the_end_and_an_unpaged_one_once(mode):
    _PagingPacs.mode = mode
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PagingPacs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        found = DicomWebClient(f"http://127.0.0.1:{server.server_address[1]}/dicom-web").search("studies")
        assert [x["0020000D"]["Value"][0] for x in found] == [f"1.2.{i}" for i in range(5)]
    finally:
        server.shutdown()
