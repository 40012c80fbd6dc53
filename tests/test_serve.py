"""`cxrtool serve`'s JSON API over a real uvicorn server on loopback: results match the library's
search, only indexed images are served (by id, never by path), uploads are size-limited, nothing
in any answer names a patient, and a slow query does not stall the server."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from cxrtool.embed.shards import image_id, write_shard
from cxrtool.index import Filters, Index, build_index
from cxrtool.serve import create_app
from cxrtool.serve.app import is_loopback
from cxrtool.serve.service import DETAIL_FIELDS
from cxrtool.workspace import Workspace

from .conftest import ARCHIVE
from .serve_helpers import UPLOAD_DICOM, build_workspace, phi_strings, serving
from .test_cli import CXRTOOL


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model, tiny_model_dir):
    return build_workspace(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def server(workspace, tiny_model):
    _, ws = workspace
    app = create_app(ws, model=tiny_model)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        yield app, client


def search(client: httpx.Client, **params) -> dict:
    response = client.get("/api/search", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_text_search_returns_the_library_ranking_with_thumbnails(server, workspace, tiny_model):
    app, client = server
    result = search(client, q="left pleural effusion", k=6, dedupe=0)  # the tiny random model crowds its vectors
    library = Index.open(workspace[1], model=tiny_model).search("left pleural effusion", k=6, dedupe=None)
    assert [h["id"] for h in result["images"]] == [str(h.id) for h in library]
    assert [h["rank"] for h in result["images"]] == list(range(1, 7))
    scores = [h["score"] for h in result["images"]]
    assert scores == sorted(scores, reverse=True)
    for hit in result["images"][:3]:
        thumb = client.get(hit["thumb"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(thumb.content))
        assert max(image.size) == 256 and image.mode == "L"


def test_a_sided_query_carries_the_models_side_caveat(server, tiny_model, monkeypatch):
    _, client = server
    monkeypatch.setattr(tiny_model.card, "laterality", {"Nodule": {"auroc": 0.34, "low": 0.19, "high": 0.48}})
    assert "not reliable" in search(client, q="left nodule", k=3)["note"]
    assert search(client, q="nodule", k=3)["note"] is None
    assert search(client, q="left pleural effusion", k=3)["note"] is None


def test_filters_and_per_study_collapse(server):
    _, client = server
    pa = search(client, q="heart", k=50, view="PA", dedupe=0)["images"]
    assert pa and all(h["view"] == "PA" for h in pa)
    cr = search(client, q="heart", k=50, modality=["CR", "DX"], dedupe=0)["images"]
    assert len(cr) > len(pa) and all(h["modality"] in ("CR", "DX") for h in cr)
    dated = search(client, q="heart", k=50, date_from="2004-01-01", date_to="2004-12-31", dedupe=0)["images"]
    assert dated and all("20040101" <= h["study_date"] <= "20041231" for h in dated)
    assert len(dated) < len(cr)  # the 2003 study is left out
    studies = search(client, q="heart", k=50, per_study="true", dedupe=0)["images"]
    keys = [h["study_key"] for h in studies]
    assert len(keys) == len(set(keys)) and any(h["views_in_study"] > 1 for h in studies)


def test_dicom_upload_finds_the_same_image(server, workspace):
    _, client = server
    data = (workspace[0] / UPLOAD_DICOM).read_bytes()
    response = client.post("/api/search/image", params={"k": 3, "name": "IM000001", "dedupe": 0}, content=data)
    assert response.status_code == 200, response.text
    top = response.json()["images"][0]
    assert top["id"] == str(image_id(UPLOAD_DICOM)) and top["score"] > 0.999
    reports = client.post("/api/search/image", params={"k": 4, "target": "reports", "dedupe": 0}, content=data).json()
    assert reports["target"] == "reports" and len(reports["reports"]) == 4 and reports["reports"][0]["text"]


def test_detail_and_nearest_reports_of_an_indexed_image(server):
    _, client = server
    hit = search(client, q="effusion", k=1, modality="CR")["images"][0]
    detail = client.get(f"/api/images/{hit['id']}").json()
    assert detail["fields"]["path"] == hit["path"] and set(detail["fields"]) <= set(DETAIL_FIELDS)
    assert detail["fields"]["patient_key"].startswith("pt-")
    image = Image.open(io.BytesIO(client.get(detail["image"]).content))
    assert image.format == "PNG" and max(image.size) == 1024
    reports = client.get(f"/api/images/{hit['id']}/reports", params={"k": 3, "dedupe": 0}).json()
    assert len(reports) == 3 and [r["rank"] for r in reports] == [1, 2, 3]
    like = search(client, like=hit["id"], k=10, dedupe=0)["images"]  # itself, tied with any lossless twins
    assert hit["id"] in [h["id"] for h in like if h["score"] > 0.999] and like[0]["score"] > 0.999


def test_no_answer_carries_patient_names_ids_or_birth_dates(server, workspace):
    _, client = server
    archive, _ = workspace
    phi = phi_strings(archive)
    assert phi, "the sample DICOMs carry names/IDs/birth dates: the test needs them"
    answers = [client.get("/").text, client.get("/static/app.js").text, client.get("/api/info").text,
               client.get("/openapi.json").text]
    for hit in search(client, q="chest", k=50, dedupe=0)["images"]:
        answers.append(client.get(f"/api/images/{hit['id']}").text)
    upload = (archive / UPLOAD_DICOM).read_bytes()
    answers.append(client.post("/api/search/image", params={"k": 50, "dedupe": 0}, content=upload).text)
    answers.append(client.get(f"/api/images/{image_id(UPLOAD_DICOM)}/reports").text)
    served = "\n".join(answers)
    assert "pacs/" in served  # the DICOMs' rows were there to leak
    for value in phi:
        assert value not in served, value


@pytest.mark.parametrize("url", [
    "/api/images/..%2F..%2F..%2Fetc%2Fpasswd/thumb",
    "/api/images/../../../etc/passwd",
    "/api/images/%2Fetc%2Fpasswd/image",
    "/api/images/pacs%2FPAT0002%2FSTUDY0001%2FSERIES01%2FIM000001.dcm/thumb",
    "/api/images/-1/thumb",
    "/api/images/99999999999999999999/image",
    "/api/search?like=../../etc/passwd",
    "/static/..%2F..%2Fapp.py",
    "/static/../../../../etc/passwd",
    "/static/service.py",
    "/api/images/12/../../../../etc/passwd",
])
def test_paths_and_malformed_ids_are_refused(server, url):
    _, client = server
    response = client.get(url)
    assert response.status_code in (400, 404), (url, response.status_code)
    assert "error" in response.json() and "root:" not in response.text


def test_ids_of_files_that_are_not_indexed_are_not_found(server, workspace):
    _, client = server
    not_indexed = image_id("pacs/PAT0002/STUDY0001/SERIES99/SR000001")  # a structured report: never embedded
    outside = image_id("../../etc/passwd")
    for i in (not_indexed, outside, 1):
        for suffix in ("", "/thumb", "/image", "/reports"):
            response = client.get(f"/api/images/{i}{suffix}")
            assert response.status_code == 404 and "no image with id" in response.json()["error"]
    assert client.get("/api/search", params={"like": not_indexed}).status_code == 404


def test_an_index_row_pointing_outside_the_archive_is_not_served(tmp_path, tiny_model):
    """A hand-edited shard cannot turn an id into a read of another file."""
    archive, ws = tmp_path / "archive", Workspace(tmp_path / "ws")
    (archive / "a").mkdir(parents=True)
    png = ARCHIVE / "hannover/case01/006f3a8a.png"
    shutil.copy(png, archive / "a/inside.png")
    shutil.copy(png, tmp_path / "outside.png")
    rows = [{"id": 1, "path": "a/inside.png", "study_key": "s1", "rows": 1, "columns": 1},
            {"id": 2, "path": "../outside.png", "study_key": "s2", "rows": 1, "columns": 1},
            {"id": 3, "path": str(tmp_path / "outside.png"), "study_key": "s3", "rows": 1, "columns": 1}]
    vectors = np.eye(3, tiny_model.card.embed_dim, dtype=np.float32)
    ws.shards.mkdir(parents=True)
    write_shard(ws.shards / "shard-00000.parquet", rows, vectors, tiny_model.card.vector_id)
    ws.write_json(ws.embed_info, {"archive": str(archive)})
    build_index(ws.root, model=tiny_model)
    with serving(create_app(ws.root, model=tiny_model)) as base, httpx.Client(base_url=base) as client:
        assert client.get("/api/images/1/thumb").status_code == 200
        for i in (2, 3):
            response = client.get(f"/api/images/{i}/thumb")
            assert response.status_code == 404 and "outside the archive" in response.json()["error"]


def test_oversized_uploads_are_refused_with_413(workspace, tiny_model):
    _, ws = workspace
    data = (workspace[0] / UPLOAD_DICOM).read_bytes()
    limit_mb = len(data) / 2**20 / 2
    with serving(create_app(ws, model=tiny_model, max_upload_mb=limit_mb)) as base, \
            httpx.Client(base_url=base, timeout=60) as client:
        declared = client.post("/api/search/image", content=data)
        assert declared.status_code == 413 and "limit" in declared.json()["error"]
        streamed = client.post("/api/search/image", content=(data[i:i + 4096] for i in range(0, len(data), 4096)))
        assert streamed.status_code == 413  # chunked: no Content-Length, counted as it arrives
        small = (workspace[0] / "hannover/case01/006f3a8a.png").read_bytes()
        assert len(small) < limit_mb * 2**20
        assert client.post("/api/search/image", content=small).status_code == 200


def test_bad_input_gets_one_readable_line_and_a_hint(server):
    _, client = server
    not_image = client.post("/api/search/image", params={"name": "notes.txt"}, content=b"just some text" * 20)
    assert not_image.status_code == 400 and not_image.json()["error"].startswith("notes.txt: not a readable image")
    empty = client.post("/api/search/image", content=b"")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    for params, needle in (({"q": "  "}, "empty"), ({"q": "x", "k": 0}, "bad parameter k"),
                           ({"q": "x", "date_from": "last week"}, "not a date"), ({}, "give one of"),
                           ({"q": "x", "target": "videos"}, "bad parameter target")):
        response = client.get("/api/search", params=params)
        assert response.status_code == 400 and needle in response.json()["error"], (params, response.text)
    assert "\n" not in client.get("/api/search", params={"q": "x", "k": 0}).json()["error"]


def test_a_report_search_without_a_report_index_says_how_to_make_one(tmp_path, workspace, tiny_model):
    ws = tmp_path / "ws"
    shutil.copytree(workspace[1], ws, ignore=shutil.ignore_patterns("reports", "index-reports", "serve-cache"))
    with serving(create_app(ws, model=tiny_model)) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get("/api/info").json()["reports"] == 0
        response = client.get("/api/search", params={"q": "effusion", "target": "reports"})
        assert response.status_code == 400 and "embed-reports" in response.json()["hint"]


def test_only_loopback_host_names_are_answered(server):
    _, client = server
    assert client.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200
    rebinding = client.get("/api/info", headers={"host": "attacker.example"})
    assert rebinding.status_code == 400 and "loopback" in rebinding.json()["error"]
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")


def test_thumbnails_are_rendered_once_then_cached_in_memory_and_on_disk(workspace, tiny_model):
    _, ws = workspace
    hit = str(image_id(UPLOAD_DICOM))
    shutil.rmtree(Workspace(ws).serve_cache, ignore_errors=True)
    app = create_app(ws, model=tiny_model)
    renders = app.state.service.renders
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        first = client.get(f"/api/images/{hit}/thumb").content
        assert client.get(f"/api/images/{hit}/thumb").content == first
        assert (renders.misses, renders.hits) == (1, 1)
    files = list(Workspace(ws).serve_cache.rglob("*.jpg"))
    assert len(files) == 1 and files[0].read_bytes() == first
    again = create_app(ws, model=tiny_model)  # a restart: memory is empty, the disk cache is not
    with serving(again) as base, httpx.Client(base_url=base, timeout=60) as client:
        assert client.get(f"/api/images/{hit}/thumb").content == first
    assert again.state.service.renders.misses == 0


def test_the_server_answers_while_a_search_waits(server):
    """Searches run in worker threads: with the query encoder held busy, other requests still
    get answers, and the waiting search completes once it is free."""
    app, client = server
    encoder = app.state.service.images._encode_lock
    result: dict = {}
    with encoder:
        waiting = threading.Thread(target=lambda: result.update(search(client, q="a query no one asked", k=2,
                                                                       dedupe=0)))
        waiting.start()
        assert client.get("/api/health").json() == {"status": "ok"}
        assert client.get("/api/info").status_code == 200
        assert waiting.is_alive() and not result
    waiting.join(timeout=60)
    assert len(result["images"]) == 2


def test_openapi_documents_every_endpoint(server):
    _, client = server
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/search/image", "/api/images/{image_id}", "/api/images/{image_id}/thumb",
            "/api/images/{image_id}/image", "/api/images/{image_id}/reports", "/api/info"} <= set(schema["paths"])
    upload = schema["paths"]["/api/search/image"]["post"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    assert json.dumps(schema).count("ErrorBody") >= 3


def test_filters_reach_the_library_unchanged(server, workspace, tiny_model):
    """The page's filter parameters mean what `cxrtool search`'s flags mean."""
    _, client = server
    filters = Filters(views=("AP",), date_from="2004-08-01")
    library = Index.open(workspace[1], model=tiny_model).search("lungs", k=10, filters=filters, per_study=True)
    served = search(client, q="lungs", k=10, view="AP", date_from="2004-08-01", per_study="true")["images"]
    assert [h["views_in_study"] for h in served] == [h.views_in_study for h in library]
    assert [h["id"] for h in served] == [str(h.id) for h in library] and library


def test_the_serve_command_listens_on_loopback_and_stops_on_ctrl_c(workspace, tiny_model_dir):
    _, ws = workspace
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*CXRTOOL, "serve", "--workspace", str(ws), "--model", str(tiny_model_dir),
                             "--port", str(port), "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.3)
        assert health.json() == {"status": "ok"}
        hits = httpx.get(f"http://127.0.0.1:{port}/api/search", params={"q": "effusion", "k": 2, "dedupe": 0}).json()
        assert len(hits["images"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in err and "WARNING" not in err
    assert "effusion" not in out + err  # no access log: typed queries stay out of the terminal's scrollback


def test_the_serve_command_says_what_is_wrong_with_a_workspace(tmp_path):
    from typer.testing import CliRunner

    from cxrtool.cli.main import app

    result = CliRunner().invoke(app, ["serve", "--workspace", str(tmp_path / "nothing-here")])
    text = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and text.startswith("error: no embeddings in") and "hint: run `cxrtool embed" in text
    assert "Traceback" not in text and "Ctrl-C" not in text  # no "serving" banner for a server that never started
