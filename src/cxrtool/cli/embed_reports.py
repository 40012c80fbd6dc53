"""`cxrtool embed-reports SOURCE`: a report bank into text shards, for image->report search."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import NO_WAIT_HELP, WORKSPACE_HELP, WORKSPACE_MODEL_HELP, out, print_json, renamed, run
from cxrtool.constants import REPORT_TEXT_FIELDS


def embed_reports_cmd(
    source: Path = typer.Argument(..., help="A study manifest (.parquet from `cxrtool prepare`) or a CSV of reports."),
    text_field: str = typer.Option("text", help=f"Manifest field to embed: {', '.join(REPORT_TEXT_FIELDS)}."),
    key_col: str = typer.Option(None, help="CSV: column with the report/study key (default: the first of study_key, "
                                "StudyInstanceUID, id, study_id)."),
    report_col: str = typer.Option(None, help="CSV: column with the report text (default: the first of report, text, "
                                   "impression, findings)."),
    text_col: str = typer.Option(None, "--text-col", hidden=True, help="Old name of --report-col."),
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    model: str = typer.Option(None, help=WORKSPACE_MODEL_HELP),
    no_wait: bool = typer.Option(False, "--no-wait", help=NO_WAIT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed report texts for `cxrtool search --image FILE --reports` (then `cxrtool index --target
    reports`); re-running resumes."""
    from cxrtool.embed.reports import embed_reports

    report_col = renamed(report_col, text_col, "--text-col", "--report-col")
    s = run(lambda: embed_reports(source, workspace, model, text_field=text_field, key_col=key_col,
                                  text_col=report_col, progress=not as_json, wait=not no_wait))
    if as_json:
        print_json(s.to_dict())
        return
    out.print(f"{s.found} reports, {s.already_done} already done, [bold]{s.embedded} embedded[/], {s.empty} empty "
              f"-> {s.workspace}/reports ({s.seconds}s)")
