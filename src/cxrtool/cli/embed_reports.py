"""`cxrtool embed-reports SOURCE`: a report bank into text shards, for image->report search."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import out, print_json, run
from cxrtool.embed.reports import TEXT_FIELDS, embed_reports


def embed_reports_cmd(
    source: Path = typer.Argument(..., help="A study manifest (.parquet from `cxrtool prepare`) or a CSV of reports."),
    text_field: str = typer.Option("text", help=f"Manifest field to embed: {', '.join(TEXT_FIELDS)}."),
    key_col: str = typer.Option(None, help="CSV: column with the report/study key."),
    text_col: str = typer.Option(None, help="CSV: column with the report text."),
    workspace: Path = typer.Option(None, help="Workspace folder (env CXRTOOL_WORKSPACE; default ./cxrtool_workspace)."),
    model: str = typer.Option(None, help="Model directory or hub name (the one the images were embedded with)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed report texts for `cxrtool search --image FILE --target reports`; re-running resumes."""
    s = run(lambda: embed_reports(source, workspace, model, text_field=text_field, key_col=key_col,
                                  text_col=text_col, progress=not as_json))
    if as_json:
        print_json(s.to_dict())
        return
    out.print(f"{s.found} reports, {s.already_done} already done, [bold]{s.embedded} embedded[/], {s.empty} empty "
              f"-> {s.workspace}/reports ({s.seconds}s)")
