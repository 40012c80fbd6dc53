"""`cxrtool embed ARCHIVE`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import out, pick_device, print_json, run
from cxrtool.embed.pipeline import embed_archive


def embed_cmd(
    archive: Path = typer.Argument(..., help="Folder of DICOM (with or without extension), PNG or JPEG files."),
    workspace: Path = typer.Option(None, help="Workspace folder (env CXRTOOL_WORKSPACE; default ./cxrtool_workspace)."),
    model: str = typer.Option(None, help="Model directory (env CXRTOOL_MODEL; default: the bundled model)."),
    batch_size: int = typer.Option(None, help="Images per model batch (default: 4 on CPU, 64 on GPU)."),
    workers: int = typer.Option(None, help="Decoding worker processes (default: half the CPUs on CPU, 0 on 2 cores; "
                                          "up to 8 with a GPU)."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:1 ... or auto."),
    overwrite: bool = typer.Option(False, help="Discard what the workspace holds and start again."),
    retry_errors: bool = typer.Option(False, help="Try files that failed in an earlier run again."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed every image of an archive into Parquet shards; re-running resumes where it stopped."""
    s = run(lambda: embed_archive(archive, workspace, model, batch_size=batch_size, workers=workers,
                                  device=pick_device(device), overwrite=overwrite, retry_errors=retry_errors,
                                  progress=not as_json))
    if as_json:
        print_json(s.to_dict())
        return
    out.print(f"{s.found} files found, {s.already_done} already done, [bold]{s.embedded} embedded[/], "
              f"{s.not_images} not images, {s.failed} failed -> {s.workspace}")
    out.print(f"{s.images_per_second:.1f} img/s (waiting for decode {s.wait_seconds:.1f}s, model "
              f"{s.model_seconds:.1f}s, writing {s.write_seconds:.1f}s)")
    for f in s.failures[:10]:
        out.print(f"[red]failed:[/] {f['path']}: {f['reason']}", highlight=False)
    if s.failed:
        out.print(f"all failures are listed in {Path(s.workspace) / 'errors.jsonl'}")
