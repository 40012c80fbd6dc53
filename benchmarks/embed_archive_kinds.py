"""Embedding throughput per kind of archive, on archives generated from the open data.

Usage: python benchmarks/embed_archive_kinds.py [--n 100] [--shared ../shared/data] [--out DIR]

With --out, the archives are kept there and reused by the next run with the same --n
(generating 2048² JPEG 2000 files takes longer than measuring them).

Builds three archives of N real NIH chest X-rays each (needs the project's open-data folder):
  jpeg   the 512-px JPEGs as published;
  dicom  2048x2048 12-bit uncompressed CR DICOMs (a typical CR size, pixels upsampled);
  j2k    the same DICOMs JPEG 2000 lossless (what many PACS exports use).
For each it prints end-to-end, decode-only and model-only images/s, the bound they imply (on a
CPU decode and model share the cores: 1/(1/decode + 1/model); on a GPU: min(decode, model)), and
end-to-end / bound, end-to-end / model-only and end-to-end / naive loop. Decode-only is exactly a
pipeline worker's per-file work (read the bytes once, content hash, header check, decode at the
model's resolution, preprocess), in one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from embed_throughput import measure
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid

from cxrtool.model import load_model

REPO = Path(__file__).resolve().parents[1]


def _dicom(pixels: np.ndarray) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("generated", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def generate(shared: Path, out: Path, n: int) -> dict[str, Path]:
    sources = sorted((shared / "nih_512" / "images").glob("*.jpg"))[:n]
    archives = {k: out / k for k in ("jpeg", "dicom", "j2k")}
    if all(a.is_dir() and sum(1 for _ in a.iterdir()) == len(sources) for a in archives.values()):
        return archives  # kept by an earlier run with the same --n
    for a in archives.values():
        a.mkdir(parents=True, exist_ok=True)
    for i, src in enumerate(sources):
        shutil.copy(src, archives["jpeg"] / src.name)
        big = Image.open(src).convert("L").resize((2048, 2048), Image.BICUBIC)
        ds = _dicom(np.asarray(big, dtype=np.uint16) * 16)  # 8 -> 12 bits
        ds.save_as(archives["dicom"] / f"IM{i:06d}", enforce_file_format=True)
        ds.compress(JPEG2000Lossless)
        ds.save_as(archives["j2k"] / f"IM{i:06d}", enforce_file_format=True)
    return archives


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=None, help="keep the generated archives here")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cxrtool-bench-"))
    archives = generate(args.shared, out, args.n)
    model = load_model(device=args.device)
    rows = {}
    for kind, archive in archives.items():
        r = measure(archive, model, args.device, repeat=args.repeat)
        d, m, e = r["decode_only_img_per_s"], r["model_only_img_per_s"], r["pipeline_img_per_s"]
        bound = min(d, m) if args.device.startswith("cuda") else 1 / (1 / d + 1 / m)
        rows[kind] = {"end_to_end": e, "decode_only": d, "decode_only_full_size": r["decode_only_full_size_img_per_s"],
                      "model_only": m, "bound": round(bound, 1), "end_to_end_over_bound": round(e / bound, 3),
                      "end_to_end_over_model_only": round(e / m, 3),
                      "end_to_end_over_naive_loop": r["pipeline_over_naive_loop"]}
    print(json.dumps({"device": args.device, "images_per_archive": args.n, "archives": rows}, indent=2))
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
