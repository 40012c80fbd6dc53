"""`cxrtool index`."""

from __future__ import annotations

from pathlib import Path

import typer

from cxrtool.cli.common import NO_WAIT_HELP, WORKSPACE_HELP, out, print_json, run
from cxrtool.constants import INDEX_KINDS


def index_cmd(
    workspace: Path = typer.Option(None, help=WORKSPACE_HELP),
    kind: str = typer.Option("auto", help=f"Index type: {', '.join(INDEX_KINDS)} (auto picks by size and memory "
                             "budget: flat, hnsw, then ivfsq, 8-bit codes re-ranked exactly; ivfpq when those "
                             "do not fit; ivf, full float32 lists, only by name)."),
    target: str = typer.Option("images", help="Collection to index: images or reports."),
    rebuild: bool = typer.Option(False, help="Build from scratch instead of adding new shards to the index."),
    memory_budget_gb: float = typer.Option(None, "--memory-budget-gb", help="RAM the index may use (default: half); "
                                           "auto moves to a smaller kind when it would not fit."),
    recall_target: float = typer.Option(0.95, help="Tune search depth until held-out recall@10 reaches this."),
    opq: bool = typer.Option(True, help="OPQ rotation before PQ (ivfpq only)."),
    device: str = typer.Option("auto", help="auto (GPU when faiss has one), cpu or cuda."),
    model: str = typer.Option(None, help="The shards' model, to tune text-query depth (default: the one the "
                              "workspace was embedded with)."),
    no_wait: bool = typer.Option(False, "--no-wait", help=NO_WAIT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the index description as JSON."),
) -> None:
    """Build the FAISS index over the workspace's shards, or add new shards to it. Run it after
    `embed`: search and serve only read the index (a torn one is rebuilt here, from the shards)."""
    from cxrtool.index.build import build_index

    budget = int(memory_budget_gb * (1 << 30)) if memory_budget_gb else None
    info = run(lambda: build_index(workspace, kind, target, rebuild=rebuild, memory_budget=budget,
                                   recall_target=recall_target, opq=opq, device=device, model=model,
                                   progress=True, wait=not no_wait))
    if as_json:
        print_json(info.to_dict())
        return
    depth = f", nprobe {info.nprobe}" if info.nprobe else f", efSearch {info.ef_search}" if info.ef_search else ""
    recall = "exact" if info.kind == "flat" else f"recall@10 {info.recall_at_10:.3f} on {info.recall_queries} " \
                                                 f"held-out image queries{depth}"
    if info.text_recall_at_10 is not None:
        recall += f"; text queries {info.text_recall_at_10:.3f} at depth {info.text_nprobe or info.text_ef_search}"
    per_vector = f" ({info.index_bytes / max(info.count, 1):,.0f} bytes/vector)" if info.count else ""
    out.print(f"indexed {info.count} vectors (dim {info.dim}) as {info.kind} [{info.factory}] on {info.device} "
              f"in {info.build_seconds:.2f}s; {recall}; {info.index_bytes / 1e6:.1f} MB{per_vector}")
    if info.rebuild_suggested:
        out.print(f"[yellow]note:[/] {info.rebuild_suggested}")
