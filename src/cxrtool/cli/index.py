"""`cxrtool index`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from cxrtool.cli.common import out, print_json, run
from cxrtool.index.build import KINDS, build_index


def index_cmd(
    workspace: Path = typer.Option(None, help="Workspace folder (env CXRTOOL_WORKSPACE; default ./cxrtool_workspace)."),
    kind: str = typer.Option("auto", help=f"Index type: {', '.join(KINDS)} (auto picks by collection size)."),
    target: str = typer.Option("images", help="Collection to index: images or reports."),
    as_json: bool = typer.Option(False, "--json", help="Print the index description as JSON."),
) -> None:
    """Build the FAISS index over the workspace's shards (search also builds it when missing)."""
    info = run(lambda: build_index(workspace, kind, target))
    if as_json:
        print_json(asdict(info))
        return
    out.print(f"indexed {info.count} vectors (dim {info.dim}) as {info.kind} [{info.factory}] "
              f"in {info.build_seconds:.2f}s")
