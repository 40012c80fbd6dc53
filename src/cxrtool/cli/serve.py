"""`cxrtool serve`: the search page on http://127.0.0.1:8000/."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import WORKSPACE_HELP, WORKSPACE_MODEL_HELP, console, pick_device, run
from cxrtool.constants import SERVE_HOST, SERVE_MAX_UPLOAD_MB, SERVE_PORT


def serve_cmd(
    host: str = typer.Option(SERVE_HOST, help="Address to listen on. Anything but loopback lets other machines in "
                             "(a warning is printed)."),
    port: int = typer.Option(SERVE_PORT, help="Port to listen on."),
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    model: str = typer.Option(None, help=WORKSPACE_MODEL_HELP),
    archive: Path = typer.Option(None, help="Where the archive is now, if it moved since `embed` (thumbnails are "
                                 "rendered from its files)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda (query encoding and, with faiss-gpu, search)."),
    max_upload_mb: float = typer.Option(SERVE_MAX_UPLOAD_MB, help="Largest image upload accepted (413 beyond)."),
    cache: bool = typer.Option(True, help="Keep rendered thumbnails in <workspace>/serve-cache/ across restarts."),
    access_log: bool = typer.Option(False, help="Log every request (off: the log would hold the text queries)."),
    viewer_url: str = typer.Option(None, help="Link each result to a viewer built from this template, e.g. "
                                   "'https://pacs/viewer?StudyInstanceUIDs={study_uid}'; default $CXRTOOL_VIEWER_URL."),
) -> None:
    """Serve a search page and its JSON API (schema at /openapi.json): text and example-image
    search with filters, thumbnails, a detail view and the nearest reports. Ctrl-C stops it."""
    from cxrtool.serve import create_app, run_server

    app = run(lambda: create_app(workspace, model, archive, pick_device(device), max_upload_mb, cache, host,
                                 viewer_url=viewer_url))
    console.print(f"cxrtool serve: http://{host if ':' not in host else f'[{host}]'}:{port}/  (Ctrl-C stops)")
    run(lambda: run_server(app, host, port, access_log))
