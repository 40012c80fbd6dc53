"""Evaluation outputs in one folder: summary.json, report.md, predictions.csv, roc.png, recall_at_k.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from cxrtool.evaluate.run import EvalResult


def _ci(a: dict | None) -> str:
    if not a:
        return "n/a"
    return f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"


def to_markdown(summary: dict) -> str:
    """The summary as Markdown tables (the figures docs/benchmarks.md quotes)."""
    d, st = summary["data"], summary["settings"]
    lines = [f"Split `{d['split']}`: {d['images']} images, {d['patients']} patients. 95 % CIs: "
             f"{st['bootstrap_resamples']} bootstrap resamples by {st['bootstrap_unit']}, seed {st['seed']}.", ""]
    zs = summary["zero_shot"]
    rule = ("mean per-prompt sigmoid with the model's bias" if summary.get("model", {}).get("scoring") == "sigmoid"
            else "softmax over positive vs negative prompt ensembles")
    lines += [f"**Zero-shot** ({rule}; accuracy/F1 at "
              f"p >= {st['threshold']}); mean AUROC {zs['mean_auroc']}", "",
              "| label | n | positives | AUROC [95% CI] | accuracy | F1 |", "|---|---|---|---|---|---|"]
    for r in zs["labels"]:
        cells = [r["label"], r["n"], r["positives"], _ci(r["auroc"]), r["accuracy"], r["f1"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    mc = summary.get("multiclass")
    if mc:
        counts = ", ".join(f"{c} {n}" for c, n in mc["classes"].items())
        prompts = ", ".join(f"{c} {n}" for c, n in mc["prompts"].items())
        lines += ["", f"**Multi-class prompt ensembles (5x200 style)**: accuracy {_ci(mc['accuracy'])}, balanced "
                  f"accuracy {mc['balanced_accuracy']}; n = {mc['n']} ({counts}); prompts per class: {prompts}."]
    rt = summary.get("retrieval")
    if rt:
        lines += ["", f"**Retrieval** ({rt['images']} images, {rt['unique_texts']} unique texts)", "",
                  "| direction | R@1 | R@5 | R@10 | mean rank | median rank | queries |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("image_to_text", "text_to_image"):
            r = rt[name]
            lines.append(f"| {name.replace('_', ' ')} | {r.get('recall@1')} | {r.get('recall@5')} | "
                         f"{r.get('recall@10')} | {r['mean_rank']} | {r['median_rank']} | {r['queries']} |")
    lp = summary.get("linear_probe")
    if lp:
        lines += ["", f"**Linear probe** (logistic regression on frozen embeddings; train split {lp['train_images']} "
                  f"images / {lp['train_patients']} patients, subsampled by patient)", "",
                  "| fraction | train images | labels scored | mean AUROC |", "|---|---|---|---|"]
        for f, r in lp["by_fraction"].items():
            lines.append(f"| {float(f):.0%} | {r['train_images']} | {r['labels_scored']} | {r['mean_auroc']} |")
    sg = summary.get("subgroups")
    if sg:
        lines += ["", "**Subgroups** (zero-shot mean AUROC over the labels each group can score)", "",
                  "| attribute | group | images | labels scored | mean AUROC |", "|---|---|---|---|---|"]
        for r in sg:
            lines.append(f"| {r['attribute']} | {r['group']} | {r['images']} | {len(r['auroc'])} | {r['mean_auroc']} |")
    return "\n".join(lines) + "\n"


def write_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    """Write every output; returns name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "summary.json", "markdown": out / "report.md", "predictions": out / "predictions.csv"}
    paths["json"].write_text(json.dumps(result.summary, indent=2) + "\n")
    paths["markdown"].write_text(to_markdown(result.summary))
    if result.predictions:
        with open(paths["predictions"], "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(result.predictions[0]))
            writer.writeheader()
            writer.writerows(result.predictions)
    paths.update(write_plots(result, out))
    return paths


def write_plots(result: EvalResult, out: Path) -> dict[str, Path]:
    """ROC curves per label (one panel) and recall@K against K for both retrieval directions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    if result.roc:
        aurocs = {r["label"]: r["auroc"] for r in result.summary["zero_shot"]["labels"]}
        fig, ax = plt.subplots(figsize=(7, 7))
        colours = plt.get_cmap("tab20").colors  # 20 distinct colours: the default cycle repeats after 10
        for i, (label, (fpr, tpr)) in enumerate(result.roc.items()):
            a = aurocs.get(label)
            ax.plot(fpr, tpr, lw=1.2, color=colours[i % 20], label=f"{label} ({a['value']:.2f})" if a else label)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="zero-shot ROC (AUROC)")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        written["roc"] = out / "roc.png"
        fig.savefig(written["roc"], dpi=110)
        plt.close(fig)
    if result.recall_curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, ranks in result.recall_curves.items():
            ks = np.arange(1, max(11, min(int(ranks.max()), 100) + 1))
            ax.plot(ks, [(ranks <= k).mean() for k in ks], label=name.replace("_", " "))
        ax.set(xlabel="K", ylabel="recall@K", title="retrieval recall@K (de-duplicated texts)", ylim=(0, 1.02))
        ax.legend()
        fig.tight_layout()
        written["recall_at_k"] = out / "recall_at_k.png"
        fig.savefig(written["recall_at_k"], dpi=110)
        plt.close(fig)
    return written
