"""`cxrtool search "QUERY"` or `cxrtool search --image FILE`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cxrtool.cli.common import out, print_json, run
from cxrtool.index.search import search


def search_cmd(
    query: str = typer.Argument(None, help='Text query, e.g. "left pleural effusion".'),
    image: Path = typer.Option(None, help="Find images like this one (DICOM/PNG/JPEG) instead of a text query."),
    k: int = typer.Option(10, "-k", "--top", help="Number of results."),
    workspace: Path = typer.Option(None, help="Workspace folder (env CXRTOOL_WORKSPACE; default ./cxrtool_workspace)."),
    model: str = typer.Option(None, help="Model directory (must be the one used by `embed`)."),
    target: str = typer.Option("images", help="What to rank: images, or reports (after `cxrtool embed-reports`)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Rank the workspace's images by similarity to a text query or an example image."""
    hits = run(lambda: search(query, image, k=k, workspace=workspace, model=model, target=target))
    if as_json:
        print_json([h.to_dict() for h in hits])
        return
    title = f'"{query}"' if query is not None else f"images like {image}"
    if target == "reports":
        table = Table(title=f"top {len(hits)} reports for {title}")
        for col in ("rank", "score", "report"):
            table.add_column(col, overflow="fold")
        table.add_column("text", overflow="fold", ratio=1)
        for h in hits:
            table.add_row(str(h.rank), f"{h.score:.3f}", h.path, h.text)
        out.print(table)
        return
    table = Table(title=f"top {len(hits)} for {title}")
    table.add_column("rank", justify="right")
    table.add_column("score")
    table.add_column("study", max_width=22, overflow="ellipsis", no_wrap=True)
    table.add_column("view")
    table.add_column("type")
    table.add_column("path", overflow="fold", ratio=1, min_width=24)
    for h in hits:
        study = h.study_key if len(h.study_key) <= 22 else "…" + h.study_key[-21:]
        kind = h.modality or Path(h.path).suffix.lstrip(".").upper() or "-"
        table.add_row(str(h.rank), f"{h.score:.3f}", study, h.view or "-", kind, h.path)
    out.print(table)
