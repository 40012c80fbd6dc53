"""Embedding from a PACS over DICOMweb vs the same files from a folder, in one run.

Usage: python benchmarks/dicomweb.py [--n 200] [--connections 1,4,8] [--model DIR_OR_NAME]

Makes ``--n`` instances from the real DICOMs in ../shared/data/dicom (CR/DX radiographs in many
transfer syntaxes; each copy gets new Study/Series/SOP UIDs), writes them to a folder and uploads
them to a real Orthanc (Debian's orthanc + orthanc-dicomweb, on a free loopback port). Then, for
the folder and for DICOMweb at each connection count:

- **fetch + decode only** (no model): the embed run's own reader and decoder over every item
  (folder: files read in this process; DICOMweb: QIDO listing + WADO-RS retrievals in the
  ``Threads`` distributor) - what the source itself costs;
- **whole embed** with the model (default: the bundled one), into a fresh workspace.

Prints img/s and the ratios DICOMweb / folder. Compare ratios, not absolute numbers, across
machines; the model dominates the whole-embed figures on a CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/orthanc.py: the same Orthanc launcher the tests use

from tests.orthanc import Orthanc, dicom_copy, skip_without_orthanc  # noqa: E402

SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"


def make_instances(n: int, folder: Path) -> list[Path]:
    import pydicom

    sources = [p for p in sorted(SHARED_DICOM.glob("*.dcm"))
               if str(pydicom.dcmread(p, stop_before_pixels=True).get("Modality", "")) in ("CR", "DX")]
    out = []
    for i in range(n):
        path = folder / f"IM{i:05d}.dcm"
        path.write_bytes(dicom_copy(sources[i % len(sources)], seed=i))
        out.append(path)
    return out


def upload_or_drop(server: Orthanc, files: list[Path]) -> int:
    """Upload each file; one the server refuses (Orthanc 1.10's DCMTK rejects the Kakadu-encoded
    J2K edge case of the shared set) is removed from the folder too, so both sources hold the same."""
    import httpx

    refused = 0
    for path in files:
        try:
            server.upload(path.read_bytes())
        except httpx.HTTPStatusError:
            path.unlink()
            refused += 1
    return refused


def decode_only(source: str, connections: int, batch: int) -> float:
    """img/s of listing + reading + decoding every item, as the embed run does it, without a model."""
    from cxrtool.embed.distributors import DecodeWorkers, Threads
    from cxrtool.embed.mapper import ImageDecoder
    from cxrtool.embed.readers import ArchiveReader, DicomWebReader
    from cxrtool.io.classify import HeaderFilter
    from cxrtool.io.dicomweb import _CLIENTS, is_dicomweb, parse_source
    from cxrtool.model.card import ImageSpec

    _CLIENTS.clear()  # a fresh connection pool per measurement
    keep = HeaderFilter(modalities=None)
    decoder = ImageDecoder(ImageSpec(input_size=288), keep, "bench-key-not-a-secret-0123456789")
    t = time.perf_counter()
    if is_dicomweb(source):
        items, distributor = DicomWebReader(parse_source(source), keep, connections=connections).items(), \
            Threads(connections)
    else:
        items, distributor = ArchiveReader(Path(source)).items(), DecodeWorkers(0)
    done = sum(1 for b in distributor.decoded(items, decoder, batch) for x in b if x[0] is not None)
    return done / (time.perf_counter() - t)


def whole_embed(source: str, model, connections: int, tmp: Path) -> float:
    from cxrtool.embed.pipeline import embed_archive
    from cxrtool.io.classify import HeaderFilter
    from cxrtool.io.dicomweb import _CLIENTS

    _CLIENTS.clear()
    ws = Path(tempfile.mkdtemp(dir=tmp))
    t = time.perf_counter()
    s = embed_archive(source, ws, model, progress=False, connections=connections,
                      header_filter=HeaderFilter(modalities=None))
    return s.embedded / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--connections", default="1,4,8")
    ap.add_argument("--model", default=None, help="default: the bundled model")
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    try:
        skip_without_orthanc()
    except BaseException as exc:  # pytest's Skipped
        sys.exit(f"cannot run: {exc}")
    from cxrtool.model import load_model

    model = load_model(args.model)
    conns = [int(c) for c in args.connections.split(",")]
    with tempfile.TemporaryDirectory(prefix="cxrtool-dicomweb-bench-") as tmpdir:
        tmp = Path(tmpdir)
        folder = tmp / "archive"
        folder.mkdir()
        files = make_instances(args.n, folder)
        server = Orthanc(tmp / "orthanc").start()
        try:
            refused = upload_or_drop(server, files)
            results: dict = {"n": args.n - refused, "refused_by_orthanc": refused,
                             "model": model.card.provenance.get("name", ""), "decode_only": {}, "embed": {}}
            warm = tmp / "warm"
            warm.mkdir()
            for f in sorted(folder.iterdir())[:4]:
                (warm / f.name).write_bytes(f.read_bytes())
            whole_embed(str(warm), model, 1, tmp)  # the model's first batches (allocations, caches) untimed
            results["decode_only"]["folder"] = decode_only(str(folder), 1, args.batch_size)
            results["embed"]["folder"] = whole_embed(str(folder), model, 1, tmp)
            for c in conns:
                results["decode_only"][f"dicomweb x{c}"] = decode_only(server.source, c, args.batch_size)
                results["embed"][f"dicomweb x{c}"] = whole_embed(server.source, model, c, tmp)
        finally:
            server.stop()
    print(f"{results['n']} instances (copies of {SHARED_DICOM.name}/ CR/DX with new UIDs; {refused} refused by "
          f"Orthanc, left out of both); model {results['model']}")
    print(f"{'source':<16}{'fetch+decode img/s':>20}{'ratio':>8}{'embed img/s':>14}{'ratio':>8}")
    for name in results["decode_only"]:
        d, e = results["decode_only"][name], results["embed"][name]
        print(f"{name:<16}{d:>20.1f}{d / results['decode_only']['folder']:>8.2f}{e:>14.1f}"
              f"{e / results['embed']['folder']:>8.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
