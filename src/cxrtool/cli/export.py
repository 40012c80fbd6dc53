"""`cxrtool export -o OUT --deidentify`: a workspace's shards and index, safe to share."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import WORKSPACE_HELP, out, print_json, run


def export_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="New folder to write the export to."),
    deidentify: bool = typer.Option(False, "--deidentify", help="Re-key every id, UID, path and patient key with a "
                                    "fresh secret that is not kept; drop dates and content hashes (required)."),
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Copy the workspace's image vectors and index for sharing outside the hospital, de-identified.

    Nothing in the export links back to a file, UID, date or patient of the source (see
    `cxrtool.export`); report texts, errors and logs are not exported.
    """
    from cxrtool.export import export_workspace

    s = run(lambda: export_workspace(out_dir, workspace, deidentify=deidentify, progress=not as_json))
    if as_json:
        print_json(s.to_dict())
        return
    out.print(f"exported {s.rows} vectors in {s.shards} shards (index: {s.index_kind}) -> {s.out}"
              + (f"; {s.skipped_shards} shard(s) that did not verify were left out" if s.skipped_shards else ""))
