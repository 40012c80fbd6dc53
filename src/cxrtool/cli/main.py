"""The `cxrtool` command: registers each subcommand's module."""

from __future__ import annotations

import logging

import typer

from cxrtool import __version__
from cxrtool.cli import (
    classify,
    embed,
    embed_reports,
    errors,
    evaluate,
    export,
    index,
    models,
    prepare,
    search,
    serve,
    train,
    validate,
)
from cxrtool.cli import import_ as import_cli
from cxrtool.cli.common import DEBUG

app = typer.Typer(
    name="cxrtool",
    help=(
        "Embedding and retrieval over chest X-ray archives.\n\n"
        "Typical use: `cxrtool embed ARCHIVE` (DICOM/PNG/JPEG folder -> vectors), then "
        "`cxrtool search \"pleural effusion\"`. Outputs go to ./cxrtool_workspace unless "
        "--workspace or $CXRTOOL_WORKSPACE says otherwise. Without --model the bundled default model "
        "is used."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrtool {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    DEBUG["on"] = DEBUG["on"] or debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(message)s")
    if not DEBUG["on"]:
        quiet_decoders()


# Decoder libraries that warn about the files they read (a DICOM cut short, an odd JPEG marker):
# what matters of that reaches errors.jsonl as the file's reason; the console stays for cxrtool's own lines.
DECODER_LOGGERS = ("pydicom", "pylibjpeg", "PIL", "openjpeg", "libjpeg")


class _NotFromDecoders(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".")[0] not in DECODER_LOGGERS


def quiet_decoders() -> None:
    """On the console's handlers, not the loggers: pydicom resets its own logger's level on import."""
    import warnings

    for handler in logging.getLogger().handlers:
        handler.addFilter(_NotFromDecoders())
    for module in ("pydicom", "PIL", "pylibjpeg"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?")


app.add_typer(prepare.app, name="prepare")
app.command("train")(train.train_cmd)
app.command("embed")(embed.embed_cmd)
app.command("embed-reports")(embed_reports.embed_reports_cmd)
app.command("index")(index.index_cmd)
app.command("search")(search.search_cmd)
app.command("validate")(validate.validate_cmd)
app.command("errors")(errors.errors_cmd)
app.command("classify")(classify.classify_cmd)
app.command("evaluate")(evaluate.evaluate_cmd)
app.command("models")(models.models_cmd)
app.add_typer(import_cli.app, name="import")
app.command("serve")(serve.serve_cmd)
app.command("export")(export.export_cmd)
