"""What the `cxrtool serve` tests share: a real workspace (sample images embedded with the tiny
model, a FAISS index, a report index) and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import csv
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom

from cxrtool.embed import embed_archive
from cxrtool.embed.reports import embed_reports
from cxrtool.index import build_index

from .conftest import ARCHIVE, SAMPLE

# DICOMs (with and without extension, several transfer syntaxes, an SR that is not an image),
# PNGs and a few NIH JPEGs: every kind of file the page must render.
PARTS = ["pacs", "hannover/case01", "hannover/case02", "hannover/case03"]
NIH_IMAGES = 8
UPLOAD_DICOM = "pacs/PAT0002/STUDY0001/SERIES01/IM000001.dcm"


def build_workspace(tmp_path_factory, model) -> tuple[Path, Path]:
    """(archive, workspace): a copy of part of sample_data, embedded with study dates kept and
    pseudonymised patient keys, indexed, plus a report bank from the sample labels. Built once per
    test session (both serve test files use it). Callers request ``tiny_model_dir`` first: saving
    the model sets its fingerprint, which the workspace must already carry."""
    root = tmp_path_factory.getbasetemp() / "serve-workspace"
    archive, ws = root / "archive", root / "ws"
    if (root / "done").is_file():
        return archive, ws
    for rel in PARTS:
        shutil.copytree(ARCHIVE / rel, archive / rel)
    for jpg in sorted((ARCHIVE / "nih").rglob("*.jpg"))[:NIH_IMAGES]:
        dst = archive / jpg.relative_to(ARCHIVE)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(jpg, dst)
    embed_archive(archive, ws, model, workers=0, keep_study_date=True, pseudonym_key="serve-test-key",
                  progress=False)
    build_index(ws, model=model)
    bank = root / "reports.csv"
    with open(SAMPLE / "labels.csv") as src, open(bank, "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["study_key", "report"])
        for row in list(csv.DictReader(src))[:40]:
            writer.writerow([row["path"].rsplit("/", 1)[0], "Findings: " + row["findings"].replace("|", ", ").lower()])
    embed_reports(bank, ws, model, progress=False)
    build_index(ws, target="reports", model=model)
    (root / "done").touch()
    return archive, ws


def phi_strings(archive: Path) -> set[str]:
    """Patient names, IDs and birth dates in the archive's DICOM headers (none may be served)."""
    found = set()
    for path in archive.rglob("*"):
        if path.is_file() and path.suffix.lower() not in {".jpg", ".png"}:
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            for tag in ("PatientName", "PatientID", "PatientBirthDate"):
                value = str(ds.get(tag, "") or "")
                if len(value) >= 4:
                    found.add(value)
    return found


@contextmanager
def serving(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
