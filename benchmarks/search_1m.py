"""Search at archive scale: 1M x 512 vectors, held-out queries, through the real index and API.

Usage: python benchmarks/search_1m.py [--n 1000000] [--shared ../shared/data] [--cache DIR]

1. Embeds up to 2,000 real chest X-rays from the open data with the default model and fits a
   mixture to those embeddings (k-means clusters, each a mean + its top principal directions +
   isotropic rest), so the synthetic collection has the crowding of real X-ray embeddings (i.i.d.
   uniform vectors would make every approximate index degrade to brute force). A realism check
   prints nearest-neighbour cosines of real vs synthetic vectors.
2. Writes N synthetic rows as real shards (ids, paths, study keys, views, dates, patient keys)
   and builds the index with `build_index` (auto: IVF-PQ with OPQ at 1M, exact re-rank).
3. Queries never added to the index (synthetic image queries, and 20 real text queries that are
   not the prompt-bank sentences the text depth was tuned on): recall@10 vs exact brute force,
   and single-query latency p50/p99 of `Index.search` (knn + exact re-rank + metadata lookup),
   unfiltered and with pre-filters; text encoding separately.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrtool.embed.shards import write_shard
from cxrtool.index import Filters, Index, build_index
from cxrtool.io import decode_image
from cxrtool.model import load_model
from cxrtool.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
TEXT_QUERIES = ["cardiomegaly", "left pleural effusion", "right pleural effusion", "pneumothorax", "atelectasis",
                "pulmonary edema", "consolidation", "pneumonia", "no acute cardiopulmonary process",
                "the lungs are clear", "nodule", "mass", "emphysema", "fibrosis", "hernia",
                "support devices", "enlarged cardiac silhouette", "small left effusion", "lung opacity",
                "fracture"]


def real_embeddings(shared: Path, model, limit: int, cache: Path | None) -> np.ndarray:
    if cache and (cache / "real.npy").is_file():
        return np.load(cache / "real.npy")
    paths = sorted((shared / "nih_512" / "images").glob("*.jpg")) + sorted((shared / "covid_ieee8023_512").rglob("*.*"))
    paths = [p for p in paths if p.suffix.lower() in (".jpg", ".jpeg", ".png")][:limit]
    vecs = model.encode_images(decode_image(p, min_side=model.card.image.input_size) for p in paths)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / "real.npy", vecs)
    return vecs


class Mixture:
    """k-means clusters of real embeddings; each: mean + top-r principal directions + isotropic rest."""

    def __init__(self, x: np.ndarray, clusters: int = 32, rank: int = 16, seed: int = 0) -> None:
        import faiss

        self.spread = 1.0
        km = faiss.Kmeans(x.shape[1], clusters, niter=30, seed=seed, spherical=True)
        km.train(x)
        assign = km.index.search(x, 1)[1][:, 0]
        self.parts = []
        for c in range(clusters):
            xc = x[assign == c]
            if len(xc) < 3:
                continue
            mu = xc.mean(0)
            _, s, vt = np.linalg.svd(xc - mu, full_matrices=False)
            var = s**2 / max(len(xc) - 1, 1)
            r = min(rank, len(var) - 1)
            rest = float(var[r:].sum() / max(x.shape[1] - r, 1))
            self.parts.append((len(xc), mu, vt[:r], np.sqrt(var[:r]), np.sqrt(rest)))
        w = np.array([p[0] for p in self.parts], float)
        self.weights = w / w.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        which = rng.choice(len(self.parts), size=n, p=self.weights)
        out = np.empty((n, self.parts[0][1].shape[0]), np.float32)
        for c in np.unique(which):
            idx = np.flatnonzero(which == c)
            _, mu, basis, sd, rest = self.parts[c]
            z = rng.standard_normal((len(idx), len(sd))) * sd * self.spread
            out[idx] = mu + z @ basis + rng.standard_normal((len(idx), len(mu))) * rest * self.spread
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


def nn_cosine(base: np.ndarray, queries: np.ndarray) -> float:
    sims = queries @ base.T
    return float(np.median(sims.max(1)))


def write_collection(ws: Workspace, vecs: np.ndarray, fingerprint: str, rng: np.random.Generator) -> None:
    ws.shards.mkdir(parents=True, exist_ok=True)
    views = np.array(["PA", "AP", "LL", "PA", "AP"])
    for s, start in enumerate(range(0, len(vecs), 1024)):
        stop = min(start + 1024, len(vecs))
        rows = [{"id": i + 1, "path": f"site-{i % 3}/p{i // 9:06d}/s{i // 3:07d}/IM{i:07d}", "study_key": f"st{i // 3}",
                 "view": views[i % 5], "modality": "DX" if i % 4 else "CR", "body_part": "CHEST",
                 "study_date": f"{2010 + i % 15}{1 + i % 12:02d}{1 + i % 28:02d}", "patient_key": f"pt-{i // 9:06d}",
                 "content_hash": f"h{i}", "rows": 2048, "columns": 2048} for i in range(start, stop)]
        write_shard(ws.shards / f"shard-{s:05d}.parquet", rows, vecs[start:stop], fingerprint)


def percentiles(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3)}


def recall(pos: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(pos, truth, strict=True)]))


def main() -> None:
    import faiss

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--real", type=int, default=2000, help="real images embedded to fit the mixture")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=None, help="keep real embeddings here between runs")
    ap.add_argument("--workspace", type=Path, default=None, help="keep the generated workspace here")
    ap.add_argument("--kind", default="auto")
    ap.add_argument("--no-opq", action="store_true")
    ap.add_argument("--keep-index", action="store_true", help="measure the kept workspace's index as it is")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    model = load_model()
    report: dict = {"n": args.n, "dim": model.card.embed_dim}

    t = time.perf_counter()
    real = real_embeddings(args.shared, model, args.real, args.cache)
    report["real_images_embedded"] = len(real)
    report["real_embed_seconds"] = round(time.perf_counter() - t, 1)
    perm = rng.permutation(len(real))
    fit, held = real[perm[: int(0.8 * len(real))]], real[perm[int(0.8 * len(real)):]]
    mix = Mixture(fit)
    # one scalar on the spread, chosen so that synthetic vectors crowd their nearest neighbours as
    # much as real ones do (the median nearest-neighbour cosine, at the same collection size)
    target = nn_cosine(fit, held)
    gaps = {}
    for spread in (0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0):
        mix.spread = spread
        gaps[spread] = abs(nn_cosine(mix.sample(len(fit), np.random.default_rng(5)),
                                     mix.sample(len(held), np.random.default_rng(6))) - target)
    mix.spread = min(gaps, key=gaps.get)
    report["mixture_spread"] = mix.spread
    synth_base, synth_q = mix.sample(len(fit), rng), mix.sample(len(held), rng)
    uniform = rng.standard_normal((len(real), real.shape[1])).astype(np.float32)
    uniform /= np.linalg.norm(uniform, axis=1, keepdims=True)
    report["realism_median_nn_cosine"] = {
        "real": round(nn_cosine(fit, held), 4), "synthetic": round(nn_cosine(synth_base, synth_q), 4),
        "uniform_random": round(nn_cosine(uniform[: len(fit)], uniform[len(fit):]), 4)}

    vecs = mix.sample(args.n, rng)
    queries = mix.sample(args.queries, rng)  # held out: never added
    text_q = model.encode_texts(TEXT_QUERIES)
    root = args.workspace or Path(tempfile.mkdtemp(prefix="cxrtool-search-bench-"))
    ws = Workspace(root)
    if not (ws.shards / "shard-00000.parquet").is_file():  # a kept --workspace is reused as is
        t = time.perf_counter()
        write_collection(ws, vecs, model.card.fingerprint, np.random.default_rng(1))
        report["write_shards_seconds"] = round(time.perf_counter() - t, 1)

    info = build_index(ws.root, args.kind, rebuild=not args.keep_index, opq=not args.no_opq, model=model,
                       progress=True)
    fields = ("kind", "factory", "nprobe", "ef_search", "rerank", "recall_at_10", "recall_queries", "text_nprobe",
              "text_ef_search", "text_recall_at_10", "text_queries", "trained_on", "build_seconds", "train_seconds",
              "add_seconds", "tune_seconds", "index_bytes")
    report["index"] = {k: getattr(info, k) for k in fields}
    stored = sum(p.stat().st_size for p in (ws.root / "index").glob("vectors-*.npy"))
    report["index"]["stored_vectors_bytes"] = stored

    t = time.perf_counter()
    index = Index.open(ws.root, model=model)
    report["open_seconds"] = round(time.perf_counter() - t, 2)

    flat = faiss.IndexFlatIP(vecs.shape[1])
    flat.add(vecs)
    truth = flat.search(queries, 10)[1]
    truth_text = flat.search(text_q, 10)[1]
    _, pos = index.search_vectors(queries, 10)
    _, pos_text = index.search_vectors(text_q, 10, text=True)  # at the depth tuned for text queries
    report["recall_at_10_held_out"] = {"image_queries": round(recall(pos, truth), 4),
                                       "text_queries": round(recall(pos_text, truth_text), 4)}

    def latency(fn, qs) -> dict:
        for q in qs[:20]:
            fn(q)
        ms = []
        for q in qs:
            t0 = time.perf_counter()
            fn(q)
            ms.append((time.perf_counter() - t0) * 1000)
        return percentiles(ms)

    pa_filter = Filters(views=("PA",))
    patient = Filters(patient_keys=tuple(f"pt-{i:06d}" for i in range(0, 3000, 3)))
    dated = Filters(date_from="2015-01-01", date_to="2016-12-31", views=("PA",))
    report["latency_single_query"] = {
        "knn_only": latency(lambda q: index.search_vectors(q, 10), queries),
        "knn_plus_metadata": latency(lambda q: index.search(vector=q, k=10, dedupe=None), queries),
        "text_query_knn_plus_metadata": latency(lambda q: index.search(vector=q, k=10, dedupe=None, text=True),
                                                np.repeat(text_q, 10, axis=0)),
        "knn_metadata_dedupe": latency(lambda q: index.search(vector=q, k=10), queries),
        "per_study": latency(lambda q: index.search(vector=q, k=10, per_study=True), queries),
        "filter_view_PA_(40%)": latency(lambda q: index.search(vector=q, k=10, filters=pa_filter, dedupe=None),
                                        queries),
        "filter_1000_patients_(0.9%)": latency(lambda q: index.search(vector=q, k=10, filters=patient, dedupe=None),
                                               queries),
        "filter_PA_2015-2016": latency(lambda q: index.search(vector=q, k=10, filters=dated, dedupe=None), queries),
    }
    for name, f in (("PA", pa_filter), ("patients", patient), ("PA_2015-2016", dated)):
        allowed = f.mask(index.store.table)
        sims = queries[:200] @ vecs.T
        sims[:, ~allowed] = -np.inf
        ftruth = np.argsort(-sims, axis=1)[:, :10]
        _, fpos = index.search_vectors(queries[:200], 10, f)
        report.setdefault("recall_at_10_filtered", {})[name] = round(recall(fpos, ftruth), 4)
    model.encode_texts(["warm up"])
    report["text_encode"] = latency(lambda q: model.encode_texts([q]), TEXT_QUERIES * 5)
    print(json.dumps(report, indent=2))
    if args.workspace is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
