"""`cxrtool errors`: the files a workspace's embed runs could not use, as a table, CSV or JSON."""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import typer

from cxrtool.cli.common import WORKSPACE_HELP, out, print_json, run
from cxrtool.constants import ERROR_STAGES

COLUMNS = ("path", "kind", "stage", "reason")


def errors_cmd(
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    kind: str = typer.Option(None, help="Only rows of this kind: error, not_image or skipped."),
    stage: str = typer.Option(None, help=f"Only rows of this stage: {', '.join(ERROR_STAGES)}."),
    limit: int = typer.Option(50, help="Rows shown in the table (CSV and JSON print all)."),
    as_json: bool = typer.Option(False, "--json", help="Print all rows as JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print all rows as CSV (path,kind,stage,reason)."),
) -> None:
    """List the files that embed could not use (errors.jsonl of every part), with stage and reason.

    Stages: discover (unreadable; DICOMDIR reference missing), read, header (unreadable; filtered), decode.

    Exit status 0, also when there are no rows.
    """
    from rich.table import Table

    from cxrtool.embed.pipeline import read_errors

    rows = [r for r in run(lambda: read_errors(workspace))
            if (kind is None or r["kind"] == kind) and (stage is None or r["stage"] == stage)]
    if as_json:
        print_json(rows)
        return
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table()
    for c in COLUMNS:
        table.add_column(c, overflow="fold")  # a path is never cut: it is what the user looks for
    for r in rows[:limit]:
        table.add_row(*(r[c] for c in COLUMNS))
    out.print(table)
    counts = Counter((r["kind"], r["stage"] or "?") for r in rows)
    more = f" ({len(rows) - limit} more: --csv or --json for all)" if len(rows) > limit else ""
    by_stage = ", ".join(f"{k}/{s} {n}" for (k, s), n in sorted(counts.items()))
    out.print(f"{len(rows)} rows{more}" + (f"; {by_stage}" if by_stage else ""), highlight=False)
