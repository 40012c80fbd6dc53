"""Search at archive scale: 1M vectors at the default model's real width, held-out queries, through
the real index and API. Prints one table (and the JSON behind it).

Usage: python benchmarks/search_1m.py [--n 1000000] [--shared ../shared/data] [--cache DIR]
                                      [--workspace DIR] [--keep-index] [--kind auto|ivf|ivf16|...]

1. Embeds up to 2,000 real chest X-rays from the open data with the default model and fits a
   mixture to those embeddings (k-means clusters, each a mean + its top principal directions +
   isotropic rest), so the synthetic collection has the crowding of real X-ray embeddings (i.i.d.
   uniform vectors would make every approximate index degrade to brute force). A realism check
   prints nearest-neighbour cosines of real vs synthetic vectors. The vectors have the model's
   output width (``card.output_dim``: 1,024 for the flip-pair default model).
2. Writes N synthetic rows as real shards (ids, paths, study keys, views, dates, patient keys)
   and builds the index with `build_index`, as `cxrtool index` does.
3. Queries never added to the index: synthetic image queries, and >= 200 real report sentences
   from the OpenI reports (``../shared/data/openi_reports``), none of them a prompt-bank sentence
   (the text search was tuned on those). Recall@10 vs exact brute force, and single-query latency
   p50/p99 of `Index.search` (knn + exact re-rank + metadata lookup), unfiltered and with
   pre-filters; near-duplicate suppression; resident memory and bytes per vector of the index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from cxrtool.embed.shards import write_shard
from cxrtool.io import decode_image
from cxrtool.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]
SHORT_QUERIES = ["cardiomegaly", "left pleural effusion", "right pleural effusion", "pneumothorax", "atelectasis",
                 "pulmonary edema", "consolidation", "pneumonia", "no acute cardiopulmonary process",
                 "the lungs are clear", "nodule", "mass", "emphysema", "fibrosis", "hernia",
                 "support devices", "enlarged cardiac silhouette", "small left effusion", "lung opacity",
                 "fracture"]
HELD_OUT_SENTENCES = 300
SHARD_ROWS = 1024


def real_embeddings(shared: Path, model, limit: int, cache: Path | None) -> np.ndarray:
    if cache and (cache / "real.npy").is_file():
        real = np.load(cache / "real.npy")
        if real.shape[1] == model.card.output_dim:
            return real
    paths = sorted((shared / "nih_512" / "images").glob("*.jpg")) + sorted((shared / "covid_ieee8023_512").rglob("*.*"))
    paths = [p for p in paths if p.suffix.lower() in (".jpg", ".jpeg", ".png")][:limit]
    vecs = model.encode_images(decode_image(p, min_side=model.card.image.input_size) for p in paths)
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cache / "real.npy", vecs)
    return vecs


def bank_sentences() -> set[str]:
    """Every sentence of the prompt bank (what the text depth is tuned on), normalised."""
    from cxrtool.index.tuning import bank_sentences as sentences

    return {_norm(s) for s in sentences()}


def _norm(sentence: str) -> str:
    return re.sub(r"\s+", " ", sentence.strip().lower()).rstrip(".")


def report_sentences(shared: Path, count: int = HELD_OUT_SENTENCES) -> list[str]:
    """``count`` distinct real sentences of the OpenI reports' findings and impressions, picked
    deterministically (the smallest SHA-1 of the normalised sentence), none of them a prompt-bank
    sentence, none with the anonymiser's "XXXX", at least three words."""
    bank = bank_sentences()
    found: dict[str, str] = {}
    with tarfile.open(shared / "openi_reports" / "NLMCXR_reports.tgz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith(".xml")):
                continue
            root = ET.fromstring(tar.extractfile(member).read())
            for node in root.iter("AbstractText"):
                if node.get("Label") not in ("FINDINGS", "IMPRESSION") or not node.text:
                    continue
                for raw in re.split(r"(?<=[.!?])\s+", node.text):
                    key = _norm(raw)
                    if "xxxx" in key or len(key.split()) < 3 or key in bank or re.match(r"^\d", key):
                        continue
                    found.setdefault(key, raw.strip())
    ordered = sorted(found, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    return [found[s] for s in ordered[:count]]


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


def fit_mixture(real: np.ndarray, report: dict) -> Mixture:
    """The mixture, its spread calibrated so that synthetic vectors crowd their nearest neighbours
    as much as real ones do (the median nearest-neighbour cosine, at the same collection size)."""
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(real))
    fit, held = real[perm[: int(0.8 * len(real))]], real[perm[int(0.8 * len(real)):]]
    mix = Mixture(fit)
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
    return mix


def write_collection(ws: Workspace, mix: Mixture, n: int, fingerprint: str, seed: int = 10) -> None:
    """N synthetic rows as shards of 1,024, generated shard by shard (never all in memory)."""
    ws.shards.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    views = np.array(["PA", "AP", "LL", "PA", "AP"])
    for s, start in enumerate(range(0, n, SHARD_ROWS)):
        stop = min(start + SHARD_ROWS, n)
        rows = [{"id": i + 1, "path": f"site-{i % 3}/p{i // 9:06d}/s{i // 3:07d}/IM{i:07d}", "study_key": f"st{i // 3}",
                 "view": views[i % 5], "modality": "DX" if i % 4 else "CR", "body_part": "CHEST",
                 "study_date": f"{2010 + i % 15}{1 + i % 12:02d}{1 + i % 28:02d}", "patient_key": f"pt-{i // 9:06d}",
                 "content_hash": f"h{i}", "rows": 2048, "columns": 2048} for i in range(start, stop)]
        write_shard(ws.shards / f"shard-{s:05d}.parquet", rows, mix.sample(stop - start, rng), fingerprint)


def prepare(args, report: dict):
    """(model, mixture, image queries, held-out text queries, workspace): everything the
    measurements need, the workspace written when it is not there yet."""
    from cxrtool.model import load_model

    model = load_model()
    report.update({"n": args.n, "dim": model.card.output_dim, "model": model.card.provenance.get("name", ""),
                   "embedding": model.card.embedding})
    t = time.perf_counter()
    real = real_embeddings(args.shared, model, args.real, args.cache)
    report["real_images_embedded"] = len(real)
    report["real_embed_seconds"] = round(time.perf_counter() - t, 1)
    mix = fit_mixture(real, report)
    queries = mix.sample(args.queries, np.random.default_rng(11))  # held out: never added
    sentences = report_sentences(args.shared)
    text_q = model.encode_texts(sentences)
    report["text_queries"] = {"held_out_report_sentences": len(sentences), "examples": sentences[:5]}
    root = args.workspace or Path(tempfile.mkdtemp(prefix="cxrtool-search-bench-"))
    ws = Workspace(root)
    if not (ws.shards / "shard-00000.parquet").is_file():  # a kept --workspace is reused as is
        t = time.perf_counter()
        write_collection(ws, mix, args.n, model.card.vector_id)
        report["write_shards_seconds"] = round(time.perf_counter() - t, 1)
    return model, mix, queries, text_q, ws


def exact_top(store, queries: np.ndarray, k: int = 10, allowed: np.ndarray | None = None,
              chunk: int = 65_536) -> np.ndarray:
    """Brute-force top-k positions over the index's stored (memory-mapped) vectors, a chunk at a
    time (no second 4 GB copy)."""
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_p = np.full((len(queries), k), -1, np.int64)
    for start in range(0, len(store), chunk):
        pos = np.arange(start, min(start + chunk, len(store)))
        sims = queries @ store.vectors(pos).T
        if allowed is not None:
            sims[:, ~allowed[pos]] = -np.inf
        s = np.concatenate([best_s, sims], axis=1)
        p = np.concatenate([best_p, np.broadcast_to(pos, sims.shape)], axis=1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        best_s, best_p = np.take_along_axis(s, top, 1), np.take_along_axis(p, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_p, order, 1)


def percentiles(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3)}


def recall(pos: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(pos, truth, strict=True)]))


def latency(fn, qs, warm: int = 20) -> dict:
    for q in qs[:warm]:
        fn(q)
    ms = []
    for q in qs:
        t0 = time.perf_counter()
        fn(q)
        ms.append((time.perf_counter() - t0) * 1000)
    return percentiles(ms)


def rss_split() -> dict:
    """Resident memory of this process (MB): private (anonymous) and file-backed (memory-mapped)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) // 1024 for k in ("RssAnon", "RssFile")}


def index_memory(path: Path, n: int) -> dict:
    """Private memory (RSS delta, fresh child process) of the FAISS index read into memory, and of
    it opened with memory-mapped lists; the seconds each open took."""
    import subprocess
    import sys

    code = ("import faiss,sys,time\n"
            "from cxrtool.index.open import read_index_mapped\n"
            "f=lambda: int(dict(l.split(':',1) for l in open('/proc/self/status'))['RssAnon'].split()[0])\n"
            "a=f(); t=time.perf_counter()\n"
            "i=read_index_mapped(sys.argv[1]) if sys.argv[2]=='mapped' else faiss.read_index(sys.argv[1])\n"
            "print(f()-a, time.perf_counter()-t)")
    out = {}
    for how in ("read", "mapped"):
        kb, seconds = subprocess.run([sys.executable, "-c", code, str(path), how], capture_output=True, text=True,
                                     check=True).stdout.split()[-2:]
        out[how] = {"private_mb": int(kb) >> 10, "bytes_per_vector": round(int(kb) * 1024 / n),
                    "open_seconds": round(float(seconds), 2)}
    return out


def mapped_latency(root: Path, queries: np.ndarray, text_q: np.ndarray, report: dict) -> None:
    """knn with the inverted lists memory-mapped (what a one-query process would open), once the
    lists are in the page cache."""
    from cxrtool.index.faiss_query import knn, search_depth
    from cxrtool.index.open import load_index

    index, info, store = load_index(root, mapped=True, stale_note=False)
    for q in queries[:200]:
        knn(index, store, q[None], 10, info)
    report["latency_ms"]["image knn, lists memory-mapped"] = latency(
        lambda q: knn(index, store, q[None], 10, info), queries)
    report["latency_ms"]["text knn, lists memory-mapped"] = latency(
        lambda q: knn(index, store, q[None], 10, info, **search_depth(info, text=True)), text_q)


def kind_memory(mix: Mixture, n: int, dim: int, kinds: list[str], root: Path) -> dict:
    """Bytes per vector of each index kind at ``n`` vectors of the real width: the FAISS index read
    into memory in a fresh child process (RSS delta, private memory) and its file size."""
    import subprocess
    import sys

    from cxrtool.index import build_index
    from cxrtool.index.info import current_generation

    out = {}
    for kind in kinds:
        ws = Workspace(root / f"kind-{kind}")
        if not (ws.shards / "shard-00000.parquet").is_file():
            write_collection(ws, mix, n, "sha256:kinds")
        info = build_index(ws.root, kind, rebuild=True, progress=False)
        gen = current_generation(ws.root / "index")
        code = ("import faiss,sys\n"
                "f=lambda: int(dict(l.split(':',1) for l in open('/proc/self/status'))['RssAnon'].split()[0])\n"
                "a=f(); i=faiss.read_index(sys.argv[1]); print(f()-a)")
        kb = int(subprocess.run([sys.executable, "-c", code, str(gen / "index.faiss")], capture_output=True,
                                text=True, check=True).stdout.split()[-1])
        out[kind] = {"factory": info.factory, "n": n, "resident_bytes_per_vector": round(kb * 1024 / n),
                     "file_bytes_per_vector": round(info.index_bytes / n), "recall_at_10": info.recall_at_10,
                     "text_recall_at_10": info.text_recall_at_10, "plus_stored_float32_per_vector": 4 * dim}
        shutil.rmtree(ws.root / "index", ignore_errors=True)
    return out


FILTERS = {
    "view PA (40 %)": {"views": ("PA",)},
    "1,000 patients (0.9 %)": {"patient_keys": tuple(f"pt-{i:06d}" for i in range(0, 3000, 3))},
    "PA + 2015-2016 (6.7 %)": {"date_from": "2015-01-01", "date_to": "2016-12-31", "views": ("PA",)},
    "PA + CR (10 %)": {"views": ("PA",), "modalities": ("CR",)},
    "CR + 2015-2016 (3.3 %)": {"modalities": ("CR",), "date_from": "2015", "date_to": "2016"},
}


def measure(index, queries: np.ndarray, text_q: np.ndarray, short_q: np.ndarray, report: dict) -> None:
    """Every measured row: recall@10 vs brute force over the stored vectors, single-query latency
    through `Index.search` (knn + re-rank + metadata)."""
    from cxrtool.index import Filters

    store = index.store
    t = time.perf_counter()
    truth = exact_top(store, queries)
    truth_text = exact_top(store, text_q)
    truth_short = exact_top(store, short_q)
    report["truth_seconds"] = round(time.perf_counter() - t, 1)
    _, pos = index.search_vectors(queries, 10)
    _, pos_text = index.search_vectors(text_q, 10, text=True)
    _, pos_short = index.search_vectors(short_q, 10, text=True)
    report["recall_at_10"] = {"image_queries": round(recall(pos, truth), 4),
                              "text_report_sentences": round(recall(pos_text, truth_text), 4),
                              "text_short_queries": round(recall(pos_short, truth_short), 4)}
    lat = report["latency_ms"] = {}
    # warm the memory-mapped lists and vectors once (a server's steady state), then measure
    for q in queries[:200]:
        index.search(vector=q, k=10)
    lat["image knn + metadata"] = latency(lambda q: index.search(vector=q, k=10, dedupe=None), queries)
    lat["text knn + metadata (report sentences)"] = latency(
        lambda q: index.search(vector=q, k=10, dedupe=None, text=True), text_q)
    lat["text knn + metadata (short queries)"] = latency(
        lambda q: index.search(vector=q, k=10, dedupe=None, text=True), np.repeat(short_q, 5, axis=0))
    lat["image + near-duplicate suppression"] = latency(lambda q: index.search(vector=q, k=10), queries)
    lat["text + near-duplicate suppression"] = latency(lambda q: index.search(vector=q, k=10, text=True), text_q)
    lat["image per study"] = latency(lambda q: index.search(vector=q, k=10, per_study=True), queries)
    import faiss

    threads = faiss.omp_get_max_threads()  # one core: how a query fares beside other work on the machine
    faiss.omp_set_num_threads(1)
    lat["image knn + metadata, 1 thread"] = latency(lambda q: index.search(vector=q, k=10, dedupe=None), queries)
    lat["text knn + metadata, 1 thread"] = latency(
        lambda q: index.search(vector=q, k=10, dedupe=None, text=True), text_q)
    faiss.omp_set_num_threads(threads)
    filt = report["filters"] = {}
    for name, spec in FILTERS.items():
        f = Filters(**spec)
        allowed = f.mask(store.table)
        row = filt[name] = {"rows": int(allowed.sum()), "fraction": round(float(allowed.mean()), 4)}
        for what, qs, is_text in (("image", queries[:300], False), ("text", text_q, True)):
            ftruth = exact_top(store, qs, allowed=allowed)
            _, fpos = index.search_vectors(qs, 10, f, text=is_text)
            row[f"{what}_recall_at_10"] = round(recall(fpos, ftruth), 4)
            row[f"{what}_latency_ms"] = latency(
                lambda q, f=f, t=is_text: index.search(vector=q, k=10, filters=f, dedupe=None, text=t), qs)


def table(report: dict) -> str:
    """The one table: every row of issue 25's (the cold-CLI row is measured elsewhere)."""
    r, lat, rec, m = report, report["latency_ms"], report["recall_at_10"], report["memory"]
    ix = r["index"]

    def pp(m: dict) -> str:
        return f"p50 {m['p50_ms']:.2f} / p99 {m['p99_ms']:.2f} ms"

    rows = [
        ("vectors", f"{r['n']:,} x {r['dim']} ({r['embedding']}), {ix['factory']}"),
        ("image queries, knn + metadata", f"{pp(lat['image knn + metadata'])}, recall@10 {rec['image_queries']:.3f} "
                                          f"(nprobe {ix['nprobe']})"),
        (f"text queries ({r['text_queries']['held_out_report_sentences']} held-out report sentences), knn + "
         "metadata", f"{pp(lat['text knn + metadata (report sentences)'])}, recall@10 "
                     f"{rec['text_report_sentences']:.3f} (nprobe {ix['text_nprobe']})"),
        ("text queries (20 short queries)", f"{pp(lat['text knn + metadata (short queries)'])}, recall@10 "
                                            f"{rec['text_short_queries']:.3f}"),
    ]
    for name, f in r["filters"].items():
        rows.append((f"filter {name}", f"image {pp(f['image_latency_ms'])}, recall@10 {f['image_recall_at_10']:.3f}; "
                                       f"text {pp(f['text_latency_ms'])}, recall@10 {f['text_recall_at_10']:.3f}"))
    rows += [
        ("with near-duplicate suppression", f"image {pp(lat['image + near-duplicate suppression'])}; "
                                            f"text {pp(lat['text + near-duplicate suppression'])}"),
        ("per study", pp(lat["image per study"])),
        ("single thread (FAISS on one core)", f"image {pp(lat['image knn + metadata, 1 thread'])}; "
                                              f"text {pp(lat['text knn + metadata, 1 thread'])}"),
        ("lists memory-mapped (one-query processes)", f"image {pp(lat['image knn, lists memory-mapped'])}; "
                                                      f"text {pp(lat['text knn, lists memory-mapped'])}"),
        ("index resident memory (this kind)", f"{m['read']['private_mb']:,} MB private read into memory "
                                              f"({m['read']['bytes_per_vector']:,} bytes/vector, RSS delta; "
                                              f"opened in {m['read']['open_seconds']} s); memory-mapped: "
                                              f"{m['mapped']['private_mb']} MB private, opened in "
                                              f"{m['mapped']['open_seconds']} s; + "
                                              f"{m['stored_float32_vectors_mb']:,} MB of float32 vectors on disk, "
                                              "memory-mapped, read for the re-rank"),
    ]
    for kind, m in r.get("kinds", {}).items():
        rows.append((f"bytes per vector: {kind}", f"{m['resident_bytes_per_vector']:,} resident "
                     f"({m['factory']}, RSS delta at {m['n']:,}); recall@10 {m['recall_at_10']}"))
    rows.append(("text encoding (1 query, not in the rows above)", pp(r["text_encode"])))
    width = max(len(a) for a, _ in rows)
    return "\n".join(["| measure | result |", "|---|---|"] + [f"| {a:<{width}} | {b} |" for a, b in rows])


def main() -> None:
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
    ap.add_argument("--memory-kinds", default="flat,hnsw,ivf,ivfsq,ivfpq",
                    help="kinds whose bytes per vector are measured at --memory-n vectors ('' to skip)")
    ap.add_argument("--memory-n", type=int, default=100_000)
    args = ap.parse_args()
    from cxrtool.index import Index, build_index

    report: dict = {"load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    model, mix, queries, text_q, ws = prepare(args, report)
    short_q = model.encode_texts(SHORT_QUERIES)
    info = build_index(ws.root, args.kind, rebuild=not args.keep_index, opq=not args.no_opq, model=model,
                       progress=True)
    fields = ("kind", "factory", "nprobe", "ef_search", "rerank", "recall_at_10", "recall_queries", "text_nprobe",
              "text_ef_search", "text_recall_at_10", "text_queries", "trained_on", "build_seconds", "train_seconds",
              "add_seconds", "tune_seconds", "index_bytes")
    report["index"] = {k: getattr(info, k) for k in fields}
    t = time.perf_counter()
    index = Index.open(ws.root, model=model)
    report["open_seconds"] = round(time.perf_counter() - t, 2)
    gen = index.store.root
    report["memory"] = {**index_memory(gen / "index.faiss", args.n),
                        "stored_float32_vectors_mb": sum(p.stat().st_size for p in gen.glob("vectors-*.npy")) >> 20}
    measure(index, queries, text_q, short_q, report)
    report["memory"]["process_rss_after_queries_mb"] = rss_split()
    mapped_latency(ws.root, queries, text_q, report)
    model.encode_texts(["warm up"])
    report["text_encode"] = latency(lambda q: model.encode_texts([q]), SHORT_QUERIES * 5)
    kinds = [k for k in args.memory_kinds.split(",") if k]
    if kinds:
        root = args.workspace.parent / "kinds" if args.workspace else Path(tempfile.mkdtemp(prefix="cxrtool-kinds-"))
        report["kinds"] = kind_memory(mix, args.memory_n, report["dim"], kinds, root)
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    print(table(report))
    if args.workspace is None:
        shutil.rmtree(ws.root, ignore_errors=True)


if __name__ == "__main__":
    main()
