"""Decoding: every transfer syntax in sample_data, MONOCHROME1, raster formats, bad input."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames

from cxrtool.errors import DecodeError, NotAnImageError
from cxrtool.io.decode import decode_image, dicom_to_unit
from cxrtool.io.discover import discover_archive

from .conftest import ARCHIVE, SAMPLE


def _sources() -> dict[str, Path]:
    with open(SAMPLE / "dicom_sources.csv") as fh:
        return {row["original_file"]: ARCHIVE / row["path"] for row in csv.DictReader(fh)}


SOURCES = _sources()
LOSSLESS = ["RG3_CR_tibia_J2KR.dcm", "RG3_CR_tibia_JLSL.dcm", "RG3_CR_tibia_JPLL.dcm", "RG3_CR_tibia_RLE.dcm"]
LOSSY = ["RG3_CR_tibia_J2KI.dcm", "RG3_CR_tibia_JLSN.dcm"]


def test_sample_archive_covers_many_transfer_syntaxes():
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in SOURCES.values()}
    # explicit VR LE, RLE, JPEG baseline, extended, lossless SV1, JPEG-LS x2, JPEG 2000 x2
    assert len(syntaxes) >= 9


@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_syntaxes_match_uncompressed_twin_exactly(name):
    twin = decode_image(SOURCES["RG3_CR_tibia_UNC.dcm"]).pixels
    img = decode_image(SOURCES[name]).pixels
    assert img.shape == twin.shape
    assert np.array_equal(img, twin)


@pytest.mark.parametrize("name", LOSSY)
def test_lossy_syntaxes_match_uncompressed_twin_within_tolerance(name):
    twin = decode_image(SOURCES["RG3_CR_tibia_UNC.dcm"]).pixels
    img = decode_image(SOURCES[name]).pixels
    assert img.shape == twin.shape
    assert float(np.abs(img - twin).mean()) < 0.01


def test_jpeg_extended_12bit_matches_lossless_reference():
    ref = decode_image(SOURCES["RG2_CR_hip_RLE.dcm"]).pixels
    img = decode_image(SOURCES["RG2_CR_hip_JPLY_fixed.dcm"]).pixels
    assert img.shape == ref.shape
    assert float(np.abs(img - ref).mean()) < 0.01


@pytest.mark.parametrize("name", ["CR_chest_PA_siim_jpegbaseline.dcm", "RG1_CR_chest_J2KI.dcm"])
def test_encapsulated_frame_matches_an_independent_decoder(name):
    """pydicom+pylibjpeg vs Pillow decoding the same compressed frame, through the same LUTs."""
    ds = pydicom.dcmread(SOURCES[name])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    stored = np.asarray(Image.open(io.BytesIO(frame))).astype(np.int32)
    if stored.max() >= 2 ** int(ds.BitsStored):  # Pillow widens <16-bit J2K samples to 16 bits
        stored >>= 16 - int(ds.BitsStored)
    reference = dicom_to_unit(stored, ds)
    img = decode_image(SOURCES[name]).pixels
    assert img.shape == reference.shape
    assert float(np.abs(img - reference).mean()) < 0.01


def test_monochrome1_is_inverted(tmp_path):
    src = SOURCES["RG3_CR_tibia_UNC.dcm"]
    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    ds.PhotometricInterpretation = "MONOCHROME2"
    flipped = tmp_path / "mono2.dcm"
    ds.save_as(flipped)
    a, b = decode_image(src).pixels, decode_image(flipped).pixels
    np.testing.assert_allclose(a + b, 1.0, atol=1e-6)


def test_decoded_pixels_are_unit_range_float32():
    for path in list(SOURCES.values())[:4]:
        px = decode_image(path).pixels
        assert px.dtype == np.float32 and px.ndim == 2
        assert px.min() >= 0.0 and px.max() <= 1.0 and px.max() > px.min()


def test_window_outside_the_data_falls_back_to_data_range(tmp_path):
    ds = pydicom.dcmread(SOURCES["RG3_CR_tibia_UNC.dcm"])
    ds.WindowCenter, ds.WindowWidth = 100000, 10
    path = tmp_path / "badwindow.dcm"
    ds.save_as(path)
    px = decode_image(path).pixels
    assert 0.2 < float(px.mean()) < 0.8


def test_dicom_without_pixels_is_not_an_image():
    sr = next(f.path for f in discover_archive(ARCHIVE) if f.path.name.startswith("SR"))
    with pytest.raises(NotAnImageError, match="without pixel data"):
        decode_image(sr)


def test_corrupt_files_raise_decode_error_with_reason(tmp_path):
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DecodeError) as info:
        decode_image(broken_png)
    assert "broken.png" in str(info.value) and info.value.short_reason

    truncated = tmp_path / "IM000002"
    data = SOURCES["RG3_CR_tibia_J2KR.dcm"].read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError) as info:
        decode_image(truncated)
    assert "IM000002" in str(info.value)

    text = tmp_path / "notes.bin"
    text.write_bytes(b"not an image at all")
    with pytest.raises(DecodeError, match="not a DICOM file"):
        decode_image(text)



def test_header_reader_returns_only_allow_listed_fields_and_keyed_pseudonyms(tmp_path):
    """The one DICOM header reader: allow-listed fields, no raw identity, and one-line errors."""
    from cxrtool.io.dicom_header import SAFE_DICOM_FIELDS, UnreadableDicomError, read_dicom_header
    from cxrtool.privacy import pseudonym

    ds = pydicom.dcmread(SOURCES["RG3_CR_tibia_UNC.dcm"])
    phi = {"PatientName": "Doe^Jane", "PatientBirthDate": "19700101", "PatientID": "MRN-4242",
           "AccessionNumber": "ACC-777", "StudyDate": "20240102", "InstitutionName": "St Elsewhere"}
    for name, value in phi.items():
        setattr(ds, name, value)
    path = tmp_path / "phi.dcm"
    ds.save_as(path)
    extra = {"TransferSyntaxUID", "has_pixels", "NumberOfFrames", "patient_key", "accession_key", "study_date"}
    for key in (None, "k"):
        meta = read_dicom_header(path, key)
        assert set(meta) <= set(SAFE_DICOM_FIELDS) | extra and meta["has_pixels"]
        assert not any(v in str(meta.values()) for v in phi.values())
    assert meta["patient_key"] == pseudonym("MRN-4242", "k") and meta["accession_key"].startswith("acc-")
    assert read_dicom_header(path, keep_study_date=True)["study_date"] == "20240102"  # only on request

    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"x" * 300)
    with pytest.raises(UnreadableDicomError) as info:
        read_dicom_header(bad)
    assert info.value.cause == "InvalidDicomError" and "\n" not in str(info.value)
    assert info.value.short_reason.startswith("unreadable DICOM header (InvalidDicomError: ")
    with pytest.raises(DecodeError, match="not a valid DICOM file"):
        decode_image(bad)


def test_sixteen_bit_png_scaled_by_its_bit_depth(tmp_path):
    arr = (np.linspace(0, 4095, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = tmp_path / "twelve_bit.png"
    Image.fromarray(arr).save(path)
    px = decode_image(path).pixels
    assert abs(float(px.max()) - 1.0) < 1e-6 and float(px.min()) == 0.0


def test_rgb_jpeg_becomes_grayscale(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 255
    path = tmp_path / "green.jpg"
    Image.fromarray(rgb).save(path, quality=100)
    px = decode_image(path).pixels
    assert px.shape == (32, 32)
    assert abs(float(px.mean()) - 0.587) < 0.02


def test_discovery_finds_dicoms_without_extension(tmp_path):
    shutil.copy(SOURCES["RG3_CR_tibia_RLE.dcm"], tmp_path / "IM000001")
    (tmp_path / "README.txt").write_text("not an image")
    found = list(discover_archive(tmp_path))
    assert [(f.rel, f.kind) for f in found] == [("IM000001", "dicom")]


@pytest.mark.parametrize("name", ["RG3_CR_tibia_J2KR.dcm", "RG3_CR_tibia_J2KI.dcm", "RG1_CR_chest_J2KI.dcm",
                                  "CR_chest_PA_siim_jpegbaseline.dcm"])
def test_reduced_resolution_decode_matches_full_decode_at_model_size(name):
    """JPEG 2000 levels / JPEG DCT scaling give the same 224-px model input as a full decode."""
    import torch.nn.functional as F

    from cxrtool.model.card import ImageSpec
    from cxrtool.model.transform import resize_to_input, to_tensor

    spec = ImageSpec("any", 1, input_size=224)
    full = decode_image(SOURCES[name])
    reduced = decode_image(SOURCES[name], min_side=224)
    assert reduced.meta.get("decode_scale", 1.0) < 1.0 and min(reduced.pixels.shape) >= 224
    a = resize_to_input(to_tensor(full.pixels), spec)
    b = resize_to_input(to_tensor(reduced.pixels), spec)
    assert float(F.l1_loss(a, b)) < 0.01


def test_codecs_without_resolution_levels_are_box_reduced_after_a_full_decode():
    """JPEG-LS, RLE, uncompressed: full decode, then f x f block means before the LUT pipeline."""
    import torch.nn.functional as F

    from cxrtool.model.card import ImageSpec
    from cxrtool.model.transform import resize_to_input, to_tensor

    spec = ImageSpec("any", 1, input_size=224)
    for name in ("RG3_CR_tibia_JLSL.dcm", "RG3_CR_tibia_RLE.dcm", "RG3_CR_tibia_UNC.dcm"):
        reduced = decode_image(SOURCES[name], min_side=224)
        assert reduced.pixels.shape == (440, 440) and reduced.meta["decode_scale"] == 0.25
        full = decode_image(SOURCES[name])
        a = resize_to_input(to_tensor(full.pixels), spec)
        b = resize_to_input(to_tensor(reduced.pixels), spec)
        assert float(F.l1_loss(a, b)) < 0.01


def test_reduced_decodes_still_report_the_stored_size(tmp_path):
    """Shards record rows/columns as stored, not as the reduced decode that embedding used."""
    import numpy as np
    from PIL import Image

    from cxrtool.embed.pipeline import image_record
    from cxrtool.io import discover_archive
    from cxrtool.io.decode import decode_image

    big = tmp_path / "big.jpg"
    Image.fromarray((np.random.default_rng(0).random((1200, 1000)) * 255).astype(np.uint8)).save(big)
    image = decode_image(big, min_side=224)
    assert image.pixels.shape[0] < 1200  # reduced
    f = next(iter(discover_archive(tmp_path)))
    record = image_record(f, image.meta, image.pixels.shape, "xxh3-128:0")
    assert (record["rows"], record["columns"]) == (1200, 1000)
