"""`cxrtool embed ARCHIVE`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import (
    DEVICE_HELP,
    MODEL_HELP,
    NO_WAIT_HELP,
    PSEUDONYM_KEY_HELP,
    WORKSPACE_HELP,
    out,
    pick_device,
    print_json,
    renamed,
    run,
)
from cxrtool.constants import RADIOGRAPH_MODALITIES, SHARD_ROWS

# Exit status: 0 all usable files embedded (or already done); 1 finished, but some files failed,
# in this run or in an earlier one and not retried (see errors.jsonl); 2 a usage/configuration
# error (one line + hint); 3 no images found.
EXIT_FAILURES, EXIT_NOTHING = 1, 3


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None or value.lower() == "any":
        return None
    return tuple(v.strip().upper() for v in value.split(",") if v.strip())


def embed_cmd(
    archive: str = typer.Argument(..., help="Folder of DICOM (with or without extension), PNG or JPEG files, or a "
                                  "PACS over DICOMweb: dicomweb+http(s)://HOST:PORT/PATH (credentials from "
                                  "$CXRTOOL_DICOMWEB_TOKEN, or $CXRTOOL_DICOMWEB_USER + $CXRTOOL_DICOMWEB_PASSWORD)."),
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    model: str = typer.Option(None, help=MODEL_HELP),
    batch_size: int = typer.Option(None, help="Images per model batch (default: 4 on CPU, 2 for a flip_pair "
                                                "model, 64 on GPU)."),
    workers: int = typer.Option(None, help="Decoding worker processes (default: half the CPUs on CPU, 0 on 2 cores; "
                                          "up to 8 with a GPU)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    shard_rows: int = typer.Option(SHARD_ROWS, help="Rows per Parquet shard (the unit of resume)."),
    overwrite: bool = typer.Option(False, help="Discard what the workspace holds and start again."),
    retry_errors: bool = typer.Option(False, help="Try files that failed in an earlier run again."),
    modality: str = typer.Option(",".join(RADIOGRAPH_MODALITIES),
                                 help="DICOM modalities to embed, comma-separated, or 'any' (e.g. CR,DX,OT)."),
    body_part: str = typer.Option(None, help="Keep only these BodyPartExamined values (missing = kept). Recommended "
                                  "for mixed PACS exports: CHEST, which keeps every chest spelling (THORAX, "
                                  "PORTABLE CHEST, TORAX, LUNG) and leaves out hips, hands and knees that would "
                                  "otherwise answer chest queries. Default: any (the summary counts the others)."),
    view: str = typer.Option(None, help="Keep only these ViewPosition values, e.g. PA,AP (missing = kept)."),
    multiframe: bool = typer.Option(False, help="Embed the first frame of multi-frame objects instead of skipping."),
    pseudonym_key: str = typer.Option(None, envvar="CXRTOOL_PSEUDONYM_KEY",
                                      help=PSEUDONYM_KEY_HELP),
    keep_study_date: bool = typer.Option(False, help="Store StudyDate (a date is identifying: off by default)."),
    float16: bool = typer.Option(False, help="Store vectors as float16 (half the disk; search reads them as float32)."),
    manifest: Path = typer.Option(None, help="A `cxrtool prepare` manifest or a CSV (path + study/patient/view/label "
                                  "columns) giving each file its study, patient, view and labels; files it lacks are "
                                  "skipped with a reason. Without it: DICOM headers, else the NIH / MIMIC-CXR / "
                                  "CheXpert layout, else one study per file."),
    num_parts: int = typer.Option(1, help="Split the archive into N parts for independent processes (by path hash); "
                                  "each part writes its own folder under shards/."),
    part_index: int = typer.Option(0, help="Which part (0..N-1) this process embeds; check the union with validate."),
    num_shards: int = typer.Option(None, "--num-shards", hidden=True, help="Old name of --num-parts."),
    shard_index: int = typer.Option(None, "--shard-index", hidden=True, help="Old name of --part-index."),
    connections: int = typer.Option(4, min=1, max=64, help="DICOMweb: concurrent downloads (at most batch size x "
                                    "connections instances are held at once)."),
    since: str = typer.Option(None, help="DICOMweb: only studies on or after this StudyDate (YYYY-MM-DD)."),
    until: str = typer.Option(None, help="DICOMweb: only studies on or before this StudyDate (YYYY-MM-DD)."),
    study: list[str] = typer.Option(None, help="DICOMweb: only this StudyInstanceUID (repeatable)."),
    engine: str = typer.Option("local", help="local (this machine) or ray: decode in Ray tasks, the model in a Ray "
                               "actor pool, this process writing the shards (pip install 'cxrtool[ray]').",
                               case_sensitive=False),
    ray_address: str = typer.Option(None, help="Ray: the cluster to join (e.g. ray://head:10001 or auto); default: "
                                    "a local cluster on this machine."),
    ray_actors: int = typer.Option(1, min=1, help="Ray: model actors (e.g. one per GPU)."),
    gpus_per_worker: float = typer.Option(0.0, min=0.0, help="Ray: GPUs per model actor."),
    threads: int = typer.Option(None, min=1, help="Ray: torch threads per model actor (default: the node's CPUs)."),
    runtime: str = typer.Option("auto", help="CPU engine of the image model: auto (ONNX Runtime when its export "
                                "matches torch on the first batch, else torch), onnx (or fail saying why), torch. "
                                "GPUs always use torch.", case_sensitive=False),
    no_wait: bool = typer.Option(False, "--no-wait", help=NO_WAIT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Embed every image of an archive into Parquet shards; re-running resumes where it stopped.

    Exit status: 0 done; 1 done, but some files failed, in this run or an earlier one and not
    retried (listed in errors.jsonl); 2 usage error; 3 no images found.
    """
    from cxrtool.embed.pipeline import embed_archive
    from cxrtool.io.classify import HeaderFilter

    num_parts = renamed(num_parts, num_shards, "--num-shards", "--num-parts")
    part_index = renamed(part_index, shard_index, "--shard-index", "--part-index")
    filters = HeaderFilter(_names(modality), _names(body_part), _names(view), multiframe)
    s = run(lambda: embed_archive(archive, workspace, model, batch_size=batch_size, workers=workers,
                                  device=pick_device(device), overwrite=overwrite, retry_errors=retry_errors,
                                  header_filter=filters, shard_rows=shard_rows, pseudonym_key=pseudonym_key,
                                  keep_study_date=keep_study_date, float16=float16, manifest=manifest,
                                  num_parts=num_parts, part_index=part_index, progress=not as_json, wait=not no_wait,
                                  connections=connections, since=since, until=until, engine=engine.lower(),
                                  ray_address=ray_address, ray_actors=ray_actors, gpus_per_worker=gpus_per_worker,
                                  threads=threads, runtime=runtime.lower(),
                                  studies=tuple(study) if study else None))
    code = EXIT_NOTHING if s.found == s.other_files else EXIT_FAILURES if s.failed or s.failed_earlier else 0
    if as_json:
        print_json(s.to_dict())
        raise typer.Exit(code)
    say = lambda text: out.print(text, highlight=False, soft_wrap=True)  # noqa: E731 - paths are never wrapped
    earlier = f" (+{s.failed_earlier} from earlier runs, not retried)" if s.failed_earlier else ""
    say(f"{s.found} files found, {s.already_done} already done, [bold]{s.embedded} embedded[/], "
        f"{s.not_images} not images, {sum(s.skipped.values())} skipped, {s.failed} failed{earlier} -> {s.workspace}")
    for reason, n in s.skipped.items():
        say(f"  skipped {n}: {reason}")
    for reason, n in s.filtered.items():
        say(f"  left out by the server query {n}: {reason}")
    rules = {"dicom": "StudyInstanceUID", "manifest": "the manifest", "nih": "NIH file names",
             "mimic-cxr": "MIMIC-CXR folders", "chexpert": "CheXpert folders",
             "file": "one study per file (no known layout)"}
    if s.study_rules:
        say("  studies from: " + ", ".join(f"{rules.get(r, r)} {n}" for r, n in sorted(s.study_rules.items())))
    if s.other_body_parts and body_part is None:
        parts = ", ".join(f"{p} {n}" for p, n in s.other_body_parts.items())
        say(f"  note: {sum(s.other_body_parts.values())} embedded images name another body part than the chest "
            f"({parts}); they will answer chest queries too. `--body-part CHEST` leaves them out "
            "(with --overwrite for this workspace); `search --body-part` filters at query time")
    say(f"{s.images_per_second:.1f} img/s in {s.seconds:.1f}s: discover {s.discover_seconds:.1f}s, waiting for "
        f"decode {s.wait_seconds:.1f}s, model {s.model_seconds:.1f}s, writing {s.write_seconds:.1f}s"
        + (f" (images encoded by {s.image_runtime})" if s.embedded and s.image_runtime else ""))
    for f in s.failures[:10]:
        say(f"[red]failed ({f['stage']}):[/] {f['path']}: {f['reason']}")
    if s.failed or s.failed_earlier:
        say(f"all failures are listed in {Path(s.workspace) / 'errors.jsonl'} (`cxrtool errors` shows them; "
            "`--retry-errors` tries them again); exit status 1")
    if s.found == s.other_files:
        out.print("[yellow]no DICOM, PNG or JPEG files found[/]" if not s.archive.startswith("dicomweb+")
                  else "[yellow]the server's query found no instances to embed[/]")
    raise typer.Exit(code)
