"""A real Orthanc PACS with the DICOMweb plugin for the tests (Debian's orthanc + orthanc-dicomweb).

Each server gets its own configuration (HTTP on 127.0.0.1 at a free port, DICOM port off, storage in
a temporary folder), is started as the real ``Orthanc`` binary, waited for on ``/system`` and
loaded through Orthanc's REST upload (``POST /instances``). ``make test`` installs the packages
(root or sudo); where that is impossible the tests skip and say why.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

PLUGIN_PATHS = ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so", "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7")


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc") or next((p for p in ("/usr/sbin/Orthanc",) if Path(p).is_file()), None)


def dicomweb_plugin() -> str | None:
    found = next((p for p in PLUGIN_PATHS if Path(p).is_file()), None)
    if found:
        return found
    try:
        listing = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True).stdout
    except OSError:
        return None
    return next((line for line in listing.splitlines() if "libOrthancDicomWeb.so" in line), None)


def skip_without_orthanc() -> None:
    if not orthanc_binary() or not dicomweb_plugin():
        pytest.skip("needs Debian's orthanc and orthanc-dicomweb packages (`make test` installs them as root or "
                    "with sudo; here they are missing and could not be installed)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process on loopback; ``users`` turns HTTP basic authentication on."""

    def __init__(self, root: Path, users: dict[str, str] | None = None) -> None:
        self.root = root
        self.users = users or {}
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "db").mkdir(exist_ok=True)
        config = {
            "Name": "cxrtool-test", "HttpPort": self.port, "RemoteAccessAllowed": False,
            "DicomServerEnabled": False, "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "AuthenticationEnabled": bool(self.users), "RegisteredUsers": self.users,
            "Plugins": [dicomweb_plugin()], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "HttpThreadsCount": 16,
        }
        (root / "orthanc.json").write_text(json.dumps(config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def source(self) -> str:
        """The cxrtool source name of its DICOMweb service."""
        return f"dicomweb+http://127.0.0.1:{self.port}/dicom-web"

    def _client(self):
        import httpx

        auth = httpx.BasicAuth(*next(iter(self.users.items()))) if self.users else None
        return httpx.Client(base_url=self.url, auth=auth, timeout=30)

    def start(self) -> Orthanc:
        log = open(self.root / "orthanc.log", "ab")  # noqa: SIM115 - owned by the process until stop()
        self.proc = subprocess.Popen([orthanc_binary(), str(self.root / "orthanc.json")], stdout=log, stderr=log,
                                     cwd=self.root)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}); see {self.root / 'orthanc.log'}")
            try:
                with self._client() as c:
                    if c.get("/system").status_code == 200:
                        return self
            except Exception:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer /system within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def upload(self, data: bytes) -> dict:
        with self._client() as c:
            r = c.post("/instances", content=data, headers={"Content-Type": "application/dicom"})
            r.raise_for_status()
            return r.json()

    def upload_files(self, paths: list[Path]) -> int:
        return sum(1 for p in paths if self.upload(p.read_bytes()))

    def count_instances(self) -> int:
        with self._client() as c:
            return int(c.get("/statistics").json()["CountInstances"])


def dicom_copy(path: Path, study_date: str | None = None, seed: int = 0) -> bytes:
    """A real DICOM with new Study/Series/SOP Instance UIDs (and optionally another StudyDate)."""
    import io

    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[f"study-{seed}"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[f"series-{seed}"])
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"sop-{seed}"])
    if "MediaStorageSOPInstanceUID" in ds.file_meta:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if study_date:
        ds.StudyDate = study_date
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
