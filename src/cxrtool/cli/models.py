"""`cxrtool models`: the bundled default model, model directories under the models home, and the
public hub models cxrtool loads by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from cxrtool.cli.common import out, print_json, run

if TYPE_CHECKING:
    from cxrtool.model.registry import ModelSummary


def models_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the listing as JSON."),
) -> None:
    """List the models --model accepts: the bundled default, directories under the models home
    ($CXRTOOL_MODELS, default ~/.cache/cxrtool/models; a hub name org/name is looked for there as
    <home>/org/name first) and the hub models cxrtool knows (details and licences: docs/models.md)."""
    from cxrtool.model.registry import ModelSummary, list_models

    listing = run(list_models)
    if as_json:
        print_json({k: ([m.to_dict() for m in v] if isinstance(v, list) else v.to_dict() if isinstance(v, ModelSummary)
                        else v) for k, v in listing.items()})
        return
    rows = [listing["default"]] if listing["default"] else []
    _print(f"installed (bundled default + {listing['models_home']})", rows + listing["local"], local=True)
    _print("hub models (`--model NAME`; fetched into the Hugging Face cache on first use)", listing["hub"],
           local=False)


def _print(title: str, rows: list[ModelSummary], local: bool) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("name", no_wrap=True)
    cols = ("family", "dim", "input", "scoring", "where", "licence", "use / note") if local else (
        "family", "dim", "input", "scoring", "params", "licence")
    for col in cols:
        table.add_column(col, overflow="fold")
    for m in rows:
        cells = [m.name, m.family, str(m.embed_dim or "?"), str(m.input_size or "?"), m.scoring]
        table.add_row(*cells, *((m.where, m.licence, m.note) if local else (m.params, m.licence)))
    out.print(table)
