"""`cxrtool validate ARCHIVE`: does the workspace account for exactly this archive?"""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import WORKSPACE_HELP, out, print_json, run


def validate_cmd(
    archive: str = typer.Argument(..., help="The archive folder that was embedded, or its DICOMweb source "
                                  "(dicomweb+http://HOST:PORT/PATH: compared with the server's instance list)."),
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check that every archive file is embedded exactly once or listed with a reason.

    Covers all parts of a partitioned run, checks that one model made every shard and that every
    shard is whole (footer, schema, rows and bytes as written). Exit status 0 if so, 1 if not.
    """
    from cxrtool.embed.validate import validate_workspace

    r = run(lambda: validate_workspace(archive, workspace))
    if as_json:
        print_json(r.to_dict())
    else:
        out.print(f"{r.files} files: {r.embedded} embedded, {r.listed_in_errors} listed in errors.jsonl; "
                  f"{len(r.duplicates)} duplicated, {len(r.missing)} missing, {len(r.unexpected)} not in the archive, "
                  f"{len(r.vector_ids)} model(s), {len(r.bad_shards)} shard(s) that do not verify")
        for b in r.bad_shards[:10]:
            out.print(f"  bad shard: {b['path']}: {b['reason']}", highlight=False, soft_wrap=True)
        if r.bad_shards:
            out.print("  `cxrtool embed` moves bad shards to <workspace>/quarantine/ and embeds their files again",
                      highlight=False)
        for name, paths in (("duplicated", r.duplicates), ("missing", r.missing), ("not in archive", r.unexpected)):
            for p in paths[:5]:
                out.print(f"  {name}: {p}", highlight=False)
        out.print("[green]ok[/]" if r.ok else "[red]NOT OK[/]")
    raise typer.Exit(0 if r.ok else 1)
