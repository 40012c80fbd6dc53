"""`cxrtool search "QUERY"`, `--image FILE`, `--image FILE --reports`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxrtool.cli.common import WORKSPACE_HELP, WORKSPACE_MODEL_HELP, console, out, print_json, run
from cxrtool.constants import DEDUPE_COSINE
from cxrtool.errors import WorkspaceError
from cxrtool.privacy import pseudonym, resolve_key

if TYPE_CHECKING:
    from cxrtool.index.search import Hit, Index

CSV_FIELDS = ["rank", "score", "id", "path", "study_key", "view", "modality", "body_part", "study_date",
              "patient_key", "views_in_study", "text", "series_uid", "sop_uid", "retrieve_url", "viewer_url"]


def _patient_keys(patients: list[str]) -> tuple[str, ...]:
    """Pseudonyms as given ("pt-..."), raw patient IDs hashed with the key `embed` used (the same
    resolution: $CXRTOOL_PSEUDONYM_KEY, else this installation's key)."""
    return tuple(p if p.startswith("pt-") else pseudonym(p, resolve_key(None)) for p in patients)


def search_cmd(
    query: str = typer.Argument(None, help='Text query, e.g. "left pleural effusion".'),
    image: Path = typer.Option(None, help="Find images like this one (DICOM/PNG/JPEG) instead of a text query."),
    k: int = typer.Option(10, "-k", "--top", help="Number of results."),
    reports: bool = typer.Option(False, "--reports", help="Rank reports (after `cxrtool embed-reports`), "
                                 "e.g. --image FILE --reports for image->report."),
    view: list[str] = typer.Option(None, help="Only these view positions (PA, AP, LL...; repeat or comma-separate)."),
    modality: list[str] = typer.Option(None, help="Only these modalities (CR, DX...)."),
    body_part: list[str] = typer.Option(None, help="Only these BodyPartExamined values."),
    date_from: str = typer.Option(None, help="Study date on or after (YYYY-MM-DD; needs --keep-study-date at embed)."),
    date_to: str = typer.Option(None, help="Study date on or before."),
    patient: list[str] = typer.Option(None, help="Only this patient: its pt-... key, or the raw ID with "
                                      "CXRTOOL_PSEUDONYM_KEY set."),
    path: str = typer.Option(None, "--path", help="Only archive paths matching this glob, e.g. 'site-a/*'."),
    per_study: bool = typer.Option(False, "--per-study", help="One result per study (its best view)."),
    dedupe: float = typer.Option(DEDUPE_COSINE, help="Hide results with cosine >= this to a better one "
                                 "(same-content copies always); 0 turns it off. The default model puts an image "
                                 "re-encoded at 0.969-1.000 to its copies, different studies at 0.69 or less."),
    exact: bool = typer.Option(False, "--exact", help="Use the query as typed; by default a query naming a finding "
                                                      "('cardiomegaly', 'left pleural effusion') is searched with "
                                                      "the prompt bank's sentences for it."),
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    model: str = typer.Option(None, help=WORKSPACE_MODEL_HELP),
    target: str = typer.Option("images", help="What to rank: images or reports (same as --reports).", hidden=True),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print results as CSV."),
    save_grid_to: Path = typer.Option(None, "--save-grid", help="Also write a contact sheet PNG of the results."),
    viewer_url: str = typer.Option(None, help="A viewer link for each hit from this template, e.g. "
                                   "'https://pacs/viewer?StudyInstanceUIDs={study_uid}' ({base}, {study_uid}, "
                                   "{series_uid}, {sop_uid}, {path}); default $CXRTOOL_VIEWER_URL."),
    links: bool = typer.Option(False, "--links", help="Show each hit's retrieve URL (and viewer URL) in the table."),
) -> None:
    """Rank the workspace's images (or reports) by similarity to a text query or an example image,
    optionally restricted by metadata before ranking."""
    from cxrtool.index.query import side_caveat

    def go() -> tuple[list[Hit], Index]:
        from cxrtool.index.filters import Filters
        from cxrtool.index.grid import save_grid
        from cxrtool.index.links import Links, viewer_template
        from cxrtool.index.search import Index

        filters = Filters(views=tuple(view or ()), modalities=tuple(modality or ()), body_parts=tuple(body_part or ()),
                          date_from=date_from, date_to=date_to, patient_keys=_patient_keys(patient or []),
                          path_glob=path)
        index = Index.open(workspace, "reports" if reports else target, model, progress=True, mapped=True)
        hits = index.search(query, image, k=k, filters=filters, per_study=per_study, dedupe=dedupe or None,
                            expand=not exact)
        archive = (index.workspace.read_json(index.workspace.embed_info) or {}).get("archive")  # read once
        if index.target == "images":
            Links(archive, viewer_template(viewer_url)).fill(hits)
        if save_grid_to is not None:
            if index.target == "reports":
                raise WorkspaceError("--save-grid draws images; it does not apply to report results")
            save_grid(hits, archive or ".", save_grid_to, title=f'"{query}"' if query else f"like {image}")
        return hits, index

    hits, index = run(go)
    caveat = side_caveat(index.card, query) if query and index.target == "images" else None
    if caveat:  # on stderr, so --json and --csv stay machine-readable
        console.print(f"[yellow]note:[/yellow] {caveat}")
    if as_json:
        # ids as strings: 64-bit integers lose digits in jq and JavaScript (the web API does the same)
        print_json([{**h.to_dict(), "id": str(h.id)} for h in hits])
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(h.to_dict() for h in hits)
    else:
        _print_table(hits, query, image, index.target == "reports", per_study, links)
    if save_grid_to is not None and not as_json and not as_csv:
        out.print(f"contact sheet: {save_grid_to}")


def _print_table(hits: list[Hit], query: str | None, image: Path | None, reports: bool, per_study: bool,
                 links: bool = False) -> None:
    from rich.table import Table

    title = f'"{query}"' if query is not None else f"images like {image}"
    if not hits:
        out.print(f"no results for {title} (check the filters)")
        return
    if reports:
        table = Table(title=f"top {len(hits)} reports for {title}")
        for col in ("rank", "score", "report"):
            table.add_column(col, overflow="fold")
        table.add_column("text", overflow="fold", ratio=1)
        for h in hits:
            table.add_row(str(h.rank), f"{h.score:.3f}", h.path, h.text)
        out.print(table)
        return
    table = Table(title=f"top {len(hits)} {'studies ' if per_study else ''}for {title}")
    table.add_column("rank", justify="right")
    table.add_column("score")
    table.add_column("study", max_width=22, overflow="ellipsis", no_wrap=True)
    table.add_column("view")
    table.add_column("type")
    if per_study:
        table.add_column("views", justify="right")
    table.add_column("link" if links else "path", overflow="fold", ratio=1, min_width=24)
    for h in hits:
        study = h.study_key if len(h.study_key) <= 22 else "…" + h.study_key[-21:]
        kind = h.modality or Path(h.path).suffix.lstrip(".").upper() or "-"
        cells = [str(h.rank), f"{h.score:.3f}", study, h.view or "-", kind]
        where = (h.viewer_url or h.retrieve_url or h.path) if links else h.path
        table.add_row(*cells, *([str(h.views_in_study)] if per_study else []), where)
    out.print(table)
