"""The DICOM grayscale display pipeline against PS3.3 C.11, on real radiograph pixels.

Each case is one dataset built from a real chest DX (the Canon in ``../shared/data/dicom``) with
pydicom, written uncompressed and decoded through :func:`decode_image`; the expected image is an
independent numpy computation of the standard's formula written here, not cxrtool code. pydicom's
own test files carry neither VOI LUT Function nor Presentation LUT Shape, hence real pixels.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian

from cxrtool.io.decode import decode_image

from .conftest import REPO

DICOM_DIR = REPO.parent / "shared" / "data" / "dicom"
CANON = DICOM_DIR / "DX_chest_PA_canon_J2KR_966.dcm"  # 12-bit, MONOCHROME1 + Presentation LUT Shape INVERSE
DX16 = DICOM_DIR / "DX_chest_16bit_J2KR.dcm"  # 16-bit, its window (2725/5310) misses its data (32744-65535)

pytestmark = [
    pytest.mark.skipif(not CANON.is_file(), reason=f"real DICOM test data not found ({DICOM_DIR})"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length"),  # the Canon's long SH
]

ATOL = 1e-5


# ----------------------------------------------------------------- the standard's formulas, here


def linear(x, c, w):
    """PS3.3 C.11.2.1.2.1 (LINEAR), y_min = 0, y_max = 1."""
    x = np.asarray(x, dtype=np.float64)
    mid = (x - (c - 0.5)) / (w - 1) + 0.5
    return np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 1.0, mid))


def linear_exact(x, c, w):
    """PS3.3 C.11.2.1.3.2 (LINEAR_EXACT), y_min = 0, y_max = 1."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))


def sigmoid(x, c, w):
    """PS3.3 C.11.2.1.3.1 (SIGMOID), y_min = 0, y_max = 1."""
    return 1.0 / (1.0 + np.exp(-4.0 * (np.asarray(x, dtype=np.float64) - c) / w))


FORMULAS = {"LINEAR": linear, "LINEAR_EXACT": linear_exact, "SIGMOID": sigmoid}


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def canon():
    """The real Canon DX and its stored values (decoded once for the module)."""
    ds = pydicom.dcmread(CANON)
    return ds, ds.pixel_array


@pytest.fixture(scope="module")
def stored(canon):
    """Real 12-bit chest pixels, every 4th row/column (532 x 500: whole anatomy, fast decodes)."""
    return np.ascontiguousarray(canon[1][::4, ::4])


@pytest.fixture
def make(canon, stored, tmp_path):
    """Write one dataset per case: the Canon's header without any VOI/polarity/modality attribute,
    the real pixels uncompressed, then the case's attributes. Returns the decoded [0, 1] image."""

    def build(name: str, photometric: str = "MONOCHROME2", pixels: np.ndarray | None = None, **attrs) -> np.ndarray:
        ds = pydicom.dcmread(CANON, stop_before_pixels=True)
        for key in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction",
                    "PresentationLUTShape", "RescaleSlope", "RescaleIntercept", "RescaleType"):
            if key in ds:
                del ds[key]
        ds.set_pixel_data(stored if pixels is None else pixels, photometric, 12, generate_instance_uid=False)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        for key, value in attrs.items():
            setattr(ds, key, value)
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        px = decode_image(path).pixels
        assert px.dtype == np.float32 and px.shape == stored.shape
        return px

    return build


def _window_inside(x) -> tuple[float, float]:
    """A window (fractional centre) that holds most of the data: the formulas' middle is exercised."""
    lo, mid, hi = np.percentile(x, [3, 50, 97])
    return round(float(mid) + 0.3, 2), round(float(hi - lo) + 0.6, 2)


def _assert_exercised(expected):
    between = np.mean((expected > 0.001) & (expected < 0.999))
    assert between > 0.5, f"only {between:.0%} of pixels inside the window"


# ---------------------------------------------------------------------------------------- cases


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_follows_its_voi_lut_function(make, stored, function):
    c, w = _window_inside(stored)
    attrs = {"WindowCenter": c, "WindowWidth": w}
    if function:
        attrs["VOILUTFunction"] = function
    px = make(f"window_{function}", **attrs)
    expected = FORMULAS[function or "LINEAR"](stored, c, w)  # absent -> LINEAR, the standard's default
    _assert_exercised(expected)
    np.testing.assert_allclose(px, expected, atol=ATOL)


def test_window_agrees_with_pydicom_apply_windowing_rescaled(make, stored):
    """cxrtool computes the window onto [0, 1] itself; pydicom's onto [0, 2**BitsStored - 1] for
    unsigned data without rescale. Rescaled, the two agree for all three functions."""
    from pydicom.pixels import apply_windowing

    c, w = _window_inside(stored)
    for function in FORMULAS:
        px = make(f"pydicom_{function}", WindowCenter=c, WindowWidth=w, VOILUTFunction=function)
        ref = Dataset()
        ref.PhotometricInterpretation, ref.BitsStored, ref.PixelRepresentation = "MONOCHROME2", 12, 0
        ref.WindowCenter, ref.WindowWidth, ref.VOILUTFunction = c, w, function
        np.testing.assert_allclose(px, apply_windowing(stored, ref) / 4095.0, atol=ATOL, err_msg=function)


def test_multi_valued_window_uses_the_first_pair_and_function(make, stored):
    c, w = _window_inside(stored)
    px = make("multi", WindowCenter=[c, 100.0], WindowWidth=[w, 50.0], VOILUTFunction=["SIGMOID", "LINEAR"])
    np.testing.assert_allclose(px, sigmoid(stored, c, w), atol=ATOL)


def test_voi_lut_sequence_takes_precedence_over_the_window(make, stored):
    """A gamma-shaped VOI LUT whose first mapped value is inside the data: values below it take the
    first entry, above the last the last entry (PS3.3 C.11.2.1.1), scaled by the 16-bit depth."""
    first, last = (int(v) for v in np.percentile(stored, [2, 98]))
    n = last - first + 1
    lut = np.round(65535 * (np.arange(n) / (n - 1)) ** 0.6).astype(np.uint16)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [n, first, 16])
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    px = make("voi_lut", VOILUTSequence=[item], WindowCenter=100.0, WindowWidth=10.0)
    expected = lut[np.clip(stored.astype(np.int64) - first, 0, n - 1)] / 65535.0
    _assert_exercised(expected)
    np.testing.assert_allclose(px, expected, atol=ATOL)


@pytest.mark.parametrize(("photometric", "shape", "inverted"), [
    ("MONOCHROME1", None, True),
    ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", "INVERSE", True),  # the real Canon's pairing: one inversion, not two
    ("MONOCHROME2", "IDENTITY", False),
    ("MONOCHROME2", None, False),
])
def test_polarity_is_one_inversion_on_the_unit_range(make, stored, photometric, shape, inverted):
    c, w = _window_inside(stored)
    attrs = {"WindowCenter": c, "WindowWidth": w}
    if shape:
        attrs["PresentationLUTShape"] = shape
    px = make(f"{photometric}_{shape}", photometric, **attrs)
    y = linear(stored, c, w)
    np.testing.assert_allclose(px, 1.0 - y if inverted else y, atol=ATOL)


def test_monochrome1_with_inverse_equals_identity_inverted_once(make, stored):
    c, w = _window_inside(stored)
    both = make("m1_inverse", "MONOCHROME1", WindowCenter=c, WindowWidth=w, PresentationLUTShape="INVERSE")
    plain = make("m2_identity", "MONOCHROME2", WindowCenter=c, WindowWidth=w, PresentationLUTShape="IDENTITY")
    np.testing.assert_allclose(both, 1.0 - plain, atol=ATOL)


def test_rescale_then_window_in_modality_units(make, stored):
    slope, intercept = 0.75, -1024.0
    values = stored * slope + intercept  # PS3.3 C.11.1: the window applies to these
    c, w = _window_inside(values)
    px = make("rescale", RescaleSlope=slope, RescaleIntercept=intercept, RescaleType="US",
              WindowCenter=c, WindowWidth=w, VOILUTFunction="LINEAR_EXACT")
    expected = linear_exact(values, c, w)
    _assert_exercised(expected)
    np.testing.assert_allclose(px, expected, atol=ATOL)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_that_misses_the_data_falls_back_to_the_data_range(make, stored, function):
    """c +- w/2 holds no pixel (a SIGMOID's tail would still give a nearly black image): the data's
    own range is used instead, a monotone, non-black image with spread."""
    px = make(f"miss_{function}", WindowCenter=float(stored.max()) + 20000, WindowWidth=400.0,
              VOILUTFunction=function)
    assert 0.2 < float(px.mean()) < 0.8 and float(px.std()) > 0.1
    order = np.argsort(stored, axis=None, kind="stable")
    assert np.all(np.diff(px.ravel()[order]) >= 0)  # brighter stored value -> never darker


def test_real_16bit_dx_whose_window_misses_its_data_is_not_black():
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(DX16)
    arr = ds.pixel_array
    assert float(np.mean((arr > 2725 - 5310 / 2) & (arr < 2725 + 5310 / 2))) == 0.0  # the window misses
    assert np.ptp(apply_voi_lut(apply_modality_lut(arr, ds), ds)) == 0  # pydicom's VOI: one flat grey level
    px = decode_image(DX16).pixels
    assert 0.2 < float(px.mean()) < 0.8 and float(px.std()) > 0.1


def test_real_canon_monochrome1_inverse_is_inverted_once(canon):
    ds, arr = canon
    assert (ds.PhotometricInterpretation, ds.PresentationLUTShape) == ("MONOCHROME1", "INVERSE")
    assert "VOILUTFunction" not in ds
    values = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = 1.0 - linear(values, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_allclose(decode_image(CANON).pixels, expected, atol=ATOL)


def test_real_canon_reduced_j2k_decode_matches_the_full_decode(canon, monkeypatch):
    """The reduced JPEG 2000 path reads the codestream's precision with pydicom's
    get_j2k_parameters (12 bits here) and inverts on the fixed [0, 1] range, so the 1/8 decode
    equals the full decode box-reduced (an inversion about the data's max would not)."""
    import pydicom.pixels.utils as pixel_utils

    calls = []
    real = pixel_utils.get_j2k_parameters

    def spy(codestream):
        calls.append(real(codestream))
        return calls[-1]

    monkeypatch.setattr(pixel_utils, "get_j2k_parameters", spy)
    reduced = decode_image(CANON, min_side=224)
    assert [c.get("precision") for c in calls] == [12]
    full = 1.0 - linear(canon[1], 2048.0, 4096.0)  # checked against the decoder above
    h, w = reduced.pixels.shape
    f = round(1 / reduced.meta["decode_scale"])
    assert (f, h * f, w * f) == (8, *canon[1].shape)
    boxed = full.reshape(h, f, w, f).mean(axis=(1, 3))
    diff = reduced.pixels - boxed  # wavelet low-pass vs box filter: edges differ a little, the level does not
    assert abs(float(diff.mean())) < 0.002 and float(np.abs(diff).mean()) < 0.02


@pytest.mark.parametrize("name", ["DX_chest_PA_canon_J2KR_966.dcm", "DX_chest_16bit_J2KR.dcm", "RG1_CR_chest_J2KI.dcm",
                                  "RG2_CR_hip_J2KR.dcm", "RG3_CR_tibia_J2KI.dcm", "CR_hand_J2KR_kakadu.dcm"])
def test_j2k_codestream_precision_matches_bits_stored(name):
    from pydicom.pixels.utils import get_j2k_parameters

    ds = pydicom.dcmread(DICOM_DIR / name)
    assert ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
    params = get_j2k_parameters(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert params["is_signed"] is False
    if name == "CR_hand_J2KR_kakadu.dcm":  # Kakadu declared 16-bit samples for 12-bit data (values <= 4095)
        assert (params["precision"], ds.BitsStored) == (16, 12)
    else:
        assert params["precision"] == ds.BitsStored

