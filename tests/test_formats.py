"""Microscope files through RosettaSciIO (hagg_tf.estimation.formats, the ``formats`` extra).

Real files written by microscope software are read from ../shared/microscope-files/ (skipped
where it is absent); further files are written here with RosettaSciIO's own writers (TIFF, NCEM
EMD), mrcfile (MRC; RosettaSciIO writes no plain MRC), tifffile (ImageJ TIFF) and h5py (a file
in the Velox layout RosettaSciIO's Velox reader reads), from simulated images.
"""
import json
import pathlib
import re
import subprocess
import sys
import uuid

import imageio.v3 as iio
import numpy as np
import pytest

from hagg_tf.estimation.formats import (FORMATS_INSTALL, choose_signal, describe_signals,
                                        formats_installed, pixel_size_from_axes,
                                        read_microscope_image)
from hagg_tf.estimation.images import InputError, read_stem_image
from hagg_tf import ModelParameters, sample_aggregate
from hagg_tf.stem import read_stem_png, render_stem

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "characterize.py"
EXAMPLE = REPO / "examples" / "sample_a"
SHARED = REPO.parent / "shared" / "microscope-files"
REAL_DM3 = SHARED / "test_STEM_image.dm3"
REAL_DM_TIFF = SHARED / "test_loading_image_saved_with_DM.tif"

needs_formats = pytest.mark.skipif(
    not all(formats_installed(suffix) for suffix in (".dm3", ".emd", ".tif", ".mrc")),
    reason="the formats extra (RosettaSciIO, h5py, tifffile) is not installed")
needs_real_files = pytest.mark.skipif(not (REAL_DM3.is_file() and REAL_DM_TIFF.is_file()),
                                      reason="no ../shared/microscope-files")
#: The simulated image's pixel size, nm, and how each unit writes it.
PIXEL_NM = 6.4
IN_UNITS = {"nm": PIXEL_NM, "Å": PIXEL_NM * 10.0, "µm": PIXEL_NM / 1000.0}


def start_tool(*args, prelude=""):
    """hagg-characterize started in a fresh interpreter (``prelude`` runs first, e.g. to hide
    a package)."""
    code = (f"{prelude}\nimport runpy, sys\nsys.argv = {[str(TOOL), *map(str, args)]!r}\n"
            f"runpy.run_path({str(TOOL)!r}, run_name='__main__')")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def finish(process) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_tool(*args, prelude=""):
    return finish(start_tool(*args, prelude=prelude))




@pytest.fixture(scope="module")
def simulated():
    """A simulated HAADF image, 48×64 px (not square, so a transposed read shows)."""
    aggregate = sample_aggregate(ModelParameters(1.8, 0.5, 3, 2), seed=3, index=0)
    image = render_stem(aggregate, seed=3, index=0, image_size=(48, 64),
                        pixel_size_nm=PIXEL_NM)
    assert image.counts.dtype == np.uint16 and image.counts.max() > 0
    return image.counts


def signal_dict(data, scale, units, title="HAADF", scale_y=None):
    """The signal dict RosettaSciIO's writers take."""
    axes = [{"name": name, "size": size, "scale": value, "offset": 0.0, "units": units,
             "navigate": False}
            for name, size, value in (("y", data.shape[0], scale if scale_y is None else scale_y),
                                      ("x", data.shape[1], scale))]
    return {"data": data, "axes": axes, "metadata": {"General": {"title": title},
                                                     "Signal": {"signal_type": ""}},
            "original_metadata": {}}


def write_tiff(path, data, scale, units, **kwargs):
    from rsciio.tiff import file_writer

    file_writer(str(path), signal_dict(data, scale, units, **kwargs))
    return path


def write_emd(path, signals, scale, units):
    """NCEM EMD with one dataset per (title, data) in ``signals``, by RosettaSciIO's writer."""
    import h5py
    from rsciio.emd._emd_ncem import EMD_NCEM

    for title, data in signals:  # write_file appends to an open file's "signals" group
        EMD_NCEM().write_file(h5py.File(path, "a"), signal_dict(data, scale, units, title))
    return path


def write_mrc(path, data, angstrom):
    import mrcfile

    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = angstrom
    return path


def write_imagej(path, data, scale, unit):
    import tifffile

    tifffile.imwrite(path, data, imagej=True, resolution=(1.0 / scale, 1.0 / scale),
                     metadata={"unit": unit})
    return path


def write_velox_like(path, images, pixel_size_m, current_a=None, dwell_s=None):
    """An EMD file in the Velox layout (JSON metadata per image, one detector each), as
    RosettaSciIO's Velox reader reads it; ``images``: (detector name, (H, W) data) pairs."""
    import h5py

    with h5py.File(path, "w") as emd:
        emd["Version"] = np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        for index, (detector, data) in enumerate(images):
            group = emd.create_group(f"Data/Image/{uuid.UUID(int=index + 1).hex}")
            group["Data"] = data[:, :, np.newaxis]
            metadata = {
                "BinaryResult": {"PixelSize": {"width": str(pixel_size_m),
                                               "height": str(pixel_size_m)},
                                 "PixelUnitX": "m", "PixelUnitY": "m",
                                 "Offset": {"x": "0", "y": "0"},
                                 "DetectorIndex": str(index), "Detector": detector},
                "Detectors": {f"Detector-{index}": {"DetectorName": detector}},
                "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}},
                "Optics": {"AccelerationVoltage": "300000"}, "Scan": {"FrameTime": "1.0"}}
            if current_a is not None:
                metadata["Optics"]["LastMeasuredScreenCurrent"] = str(current_a)
            if dwell_s is not None:
                metadata["Scan"]["DwellTime"] = str(dwell_s)
            encoded = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
            group["Metadata"] = encoded[:, np.newaxis]
    return path


# --------------------------------------------------------------- the real microscope files

@needs_formats
@needs_real_files
def test_real_digitalmicrograph_files_give_their_pixel_size_units_and_counts():
    from rsciio.digitalmicrograph import file_reader as read_dm
    from rsciio.tiff import file_reader as read_tiff

    dm3 = read_microscope_image(REAL_DM3)
    raw = read_dm(str(REAL_DM3))[0]["data"]
    assert (dm3.format, dm3.stored_dtype, dm3.pixels.shape) == ("DigitalMicrograph", "uint32",
                                                                (68, 68))
    # uint32 counts within 0…65535 are kept exactly, as the 16-bit counts of any image.
    assert dm3.detector_counts and dm3.pixels.dtype == np.uint16
    np.testing.assert_array_equal(dm3.pixels, raw)
    assert dm3.units == "nm" and dm3.pixel_size_nm == pytest.approx(0.248538, rel=1e-5)
    assert dm3.signal.title == "test_STEM_image" and dm3.signal.detector == "Fei HAADF"
    # GMS wrote "Probe Current (nA) = 0.0": no electrons per pixel from the file, the dwell
    # time (DigiScan Sample Time 3.5 µs) is read all the same.
    assert dm3.electrons_per_pixel is None and dm3.dwell_time_s == pytest.approx(3.5e-6)
    image, warnings = read_stem_image(REAL_DM3, dose=100.0)
    assert image.sources == {"pixel_size_nm": "metadata", "electrons_per_pixel": "dose"}
    assert image.electrons_per_pixel == pytest.approx(100.0 * (10 * 0.248538) ** 2, rel=1e-5)
    assert image.describe()["microscope_file"]["detector"] == "Fei HAADF" and not warnings

    tiff = read_microscope_image(REAL_DM_TIFF)
    assert (tiff.format, tiff.stored_dtype, tiff.pixels.shape) == ("TIFF", "int32", (68, 68))
    np.testing.assert_array_equal(tiff.pixels, read_tiff(str(REAL_DM_TIFF))[0]["data"])
    # DigitalMicrograph's TIFF tags: 0.16867 µm per pixel.
    assert tiff.units == "µm" and tiff.scale == pytest.approx(0.168675, rel=1e-5)
    assert tiff.pixel_size_nm == pytest.approx(168.675, rel=1e-5)
    image, _ = read_stem_image(REAL_DM_TIFF, dose=100.0)
    assert image.pixel_size_nm == pytest.approx(168.675, rel=1e-5)


@needs_formats
@needs_real_files
def test_the_real_dm3_is_refused_through_the_cli_as_unable_to_show_an_aggregate(
        one_error_line, tmp_path):
    # 68 px at 0.25 nm: a 17 nm field of view, smaller than one aggregate.
    line = one_error_line(run_tool(REAL_DM3, f"--output={tmp_path / 'out'}"))
    assert "test_STEM_image.dm3" in line and "0.2485" in line  # the file's pixel size
    assert not (tmp_path / "out" / "report.json").exists()


# ------------------------------------------------------------- files written by the writers

@needs_formats
@pytest.mark.parametrize("writer, units", [
    ("tiff", "nm"), ("tiff", "Å"), ("tiff", "µm"),
    ("emd", "nm"), ("emd", "Å"), ("emd", "µm"),
    ("mrc", "Å"), ("imagej", "nm"), ("imagej", "micron"), ("imagej", "\\u00B5m")])
def test_written_files_round_trip_image_and_pixel_size(tmp_path, simulated, writer, units):
    scale = IN_UNITS.get(units, PIXEL_NM / 1000.0)
    path = {"tiff": lambda: write_tiff(tmp_path / "a.tif", simulated, scale, units),
            "emd": lambda: write_emd(tmp_path / "a.emd", [("HAADF", simulated)], scale, units),
            "mrc": lambda: write_mrc(tmp_path / "a.mrc", simulated, scale),
            "imagej": lambda: write_imagej(tmp_path / "a.tif", simulated, scale, units),
            }[writer]()
    image, warnings = read_stem_image(path, dose=149.0)
    np.testing.assert_array_equal(image.counts, simulated)
    assert image.pixel_size_nm == pytest.approx(PIXEL_NM, rel=1e-6)
    assert image.sources == {"pixel_size_nm": "metadata", "electrons_per_pixel": "dose"}
    assert image.electrons_per_pixel == pytest.approx(149.0 * (10 * PIXEL_NM) ** 2, rel=1e-6)
    assert image.dtype == "uint16" and not warnings


@needs_formats
def test_several_signals_pick_the_haadf_one_and_signal_overrides(tmp_path, simulated):
    bright_field = (simulated.max() - simulated).astype(np.uint16)
    dark_field = (simulated // 2).astype(np.uint16)
    path = write_emd(tmp_path / "three.emd", [("BF", bright_field), ("HAADF", simulated),
                                              ("DF4", dark_field)], PIXEL_NM, "nm")
    titles = [info.title for info in read_microscope_image(path).signals]
    assert sorted(titles) == ["BF", "DF4", "HAADF"]
    image, _ = read_stem_image(path, dose=149.0)
    np.testing.assert_array_equal(image.counts, simulated)
    assert image.describe()["microscope_file"]["signal_title"] == "HAADF"
    image, _ = read_stem_image(path, dose=149.0, signal="bf")  # names: case-insensitive
    np.testing.assert_array_equal(image.counts, bright_field)
    image, _ = read_stem_image(path, dose=149.0, signal=str(titles.index("DF4")))
    np.testing.assert_array_equal(image.counts, dark_field)
    with pytest.raises(InputError, match="no signal named 'ABF'") as error:
        read_stem_image(path, signal="ABF")
    assert all(f"'{title}'" in str(error.value) for title in titles)
    with pytest.raises(InputError, match="indices 0 to 2"):
        read_stem_image(path, signal=3)

    no_haadf = write_emd(tmp_path / "none.emd", [("BF", bright_field), ("DF2", dark_field),
                                                 ("DF4", dark_field)], PIXEL_NM, "nm")
    with pytest.raises(InputError, match="none is named HAADF") as error:
        read_stem_image(no_haadf, dose=149.0)
    assert "--signal" in str(error.value)
    assert all(f"'{title}'" in str(error.value) for title in ("BF", "DF2", "DF4"))
    two = write_emd(tmp_path / "two.emd", [("HAADF", simulated), ("HAADF-2", dark_field)],
                    PIXEL_NM, "nm")
    with pytest.raises(InputError, match="2 are named HAADF"):
        read_stem_image(two, dose=149.0)
    image, _ = read_stem_image(two, dose=149.0, signal="HAADF-2")
    np.testing.assert_array_equal(image.counts, dark_field)


def test_signal_choice_by_detector_name_and_refusal_of_stacks():
    signals = [{"data": np.zeros((4, 16, 16), np.uint16), "metadata": {"General": {
                    "title": "HAADF"}}, "axes": [{"navigate": True}, {}, {}]},
               {"data": np.zeros((16, 16), np.uint16), "metadata": {"General": {
                    "title": "image 2"}}, "axes": [{}, {}],
                "original_metadata": {"BinaryResult": {"Detector": "HAADF"}}},
               {"data": np.zeros((16, 16), np.uint16), "metadata": {"General": {
                    "title": "image 3"}}, "axes": [{}, {}],
                "original_metadata": {"BinaryResult": {"Detector": "BF"}}}]
    infos = describe_signals(signals)
    assert [info.is_image for info in infos] == [False, True, True]
    # The stack titled HAADF is no image; the image whose detector is HAADF is chosen.
    assert choose_signal(infos, None).index == 1
    assert choose_signal(infos, "bf").index == 2
    with pytest.raises(InputError, match="not a 2-D image"):
        choose_signal(infos, 0)
    with pytest.raises(InputError, match="no 2-D image"):
        choose_signal(infos[:1], None)


@needs_formats
def test_velox_layout_gives_the_haadf_detector_and_electrons_per_pixel(tmp_path, simulated):
    from scipy.constants import elementary_charge

    current, dwell = 50e-12, 10e-6  # 50 pA, 10 µs per pixel
    path = write_velox_like(tmp_path / "velox.emd",
                            [("BF", (simulated.max() - simulated).astype(np.uint16)),
                             ("HAADF", simulated), ("DF4", simulated // 2)],
                            PIXEL_NM * 1e-9, current, dwell)
    image, warnings = read_stem_image(path)
    np.testing.assert_array_equal(image.counts, simulated)
    assert image.pixel_size_nm == pytest.approx(PIXEL_NM, rel=1e-9)
    assert image.electrons_per_pixel == pytest.approx(current * dwell / elementary_charge)
    assert image.sources == {"pixel_size_nm": "metadata", "electrons_per_pixel": "metadata"}
    assert image.describe()["microscope_file"]["detector"] == "HAADF"
    assert any("electron-counting" in warning for warning in warnings)
    # The flag overrides the file's value, as for any metadata.
    image, _ = read_stem_image(path, electrons_per_pixel=1000.0)
    assert image.electrons_per_pixel == 1000.0
    # Without a recorded current the dose flag applies as today.
    without = write_velox_like(tmp_path / "nocurrent.emd", [("HAADF", simulated)],
                               PIXEL_NM * 1e-9, None, dwell)
    image, _ = read_stem_image(without, dose=100.0)
    assert image.sources["electrons_per_pixel"] == "dose"


# --------------------------------------------------------------------------- units and scale

@pytest.mark.parametrize("scale, units, nm", [
    (0.8, "nm", 0.8), (8.0, "Å", 0.8), (8.0, "\u212b", 0.8), (0.0008, "µm", 0.8),
    (0.0008, "\u03bcm", 0.8), (0.0008, "um", 0.8), (0.0008, "micron", 0.8), (800.0, "pm", 0.8),
    (8e-10, "m", 0.8)])
def test_units_are_converted_explicitly(scale, units, nm):
    axes = [{"scale": scale, "units": units}, {"scale": scale, "units": units}]
    size, written_scale, written_units, problem = pixel_size_from_axes(axes)
    assert size == pytest.approx(nm, rel=1e-12) and problem is None
    assert (written_scale, written_units) == (scale, units)


def test_unknown_reciprocal_missing_and_non_square_scales():
    size, _, _, problem = pixel_size_from_axes([{"scale": 2.0, "units": "furlong"}] * 2, "a.emd")
    assert size is None and "unknown units 'furlong'" in problem and "--pixel_size_nm" in problem
    size, _, units, problem = pixel_size_from_axes([{"scale": 1.0, "units": "<undefined>"}] * 2)
    assert size is None and units is None and "axes are in pixels" in problem
    with pytest.raises(InputError, match="reciprocal space"):
        pixel_size_from_axes([{"scale": 0.1, "units": "1 / nm"}] * 2, "a.dm4")
    with pytest.raises(InputError, match="non-square pixels"):
        pixel_size_from_axes([{"scale": 0.5, "units": "nm"}, {"scale": 0.6, "units": "nm"}])
    # Mixed units of one length are fine.
    size, _, _, _ = pixel_size_from_axes([{"scale": 5.0, "units": "Å"},
                                          {"scale": 0.5, "units": "nm"}])
    assert size == pytest.approx(0.5)


@needs_formats
def test_files_with_unknown_units_need_the_flag_and_plain_tiffs_read_as_before(tmp_path,
                                                                               simulated):
    odd = write_tiff(tmp_path / "odd.tif", simulated, 2.0, "furlong")
    with pytest.raises(InputError, match="unknown units 'furlong'"):
        read_stem_image(odd, dose=149.0)
    image, _ = read_stem_image(odd, dose=149.0, pixel_size_nm=PIXEL_NM)
    assert image.pixel_size_nm == PIXEL_NM and image.sources["pixel_size_nm"] == "flag"
    with pytest.raises(InputError, match="non-square"):
        read_stem_image(write_tiff(tmp_path / "rect.tif", simulated, 1.0, "nm", scale_y=2.0))
    # A TIFF without a calibration is a plain image, as without the extra: its pixel size comes
    # from the flag, and int32 stays refused (only calibrated microscope TIFFs are counts).
    plain = tmp_path / "plain.tif"
    iio.imwrite(plain, simulated)
    with pytest.raises(InputError, match="no pixel size in the file; give --pixel_size_nm"):
        read_stem_image(plain)
    image, _ = read_stem_image(plain, pixel_size_nm=PIXEL_NM, dose=149.0)
    np.testing.assert_array_equal(image.counts, simulated)
    iio.imwrite(tmp_path / "int32.tif", simulated.astype(np.int32))
    with pytest.raises(InputError, match="unsupported pixel type"):
        read_stem_image(tmp_path / "int32.tif", pixel_size_nm=PIXEL_NM)


@needs_formats
def test_wide_and_negative_integer_counts(tmp_path, simulated):
    wide = simulated.astype(np.uint32) * 4 + 70000  # above 16 bits: float64 counts
    image, _ = read_stem_image(write_emd(tmp_path / "wide.emd", [("HAADF", wide)], PIXEL_NM,
                                         "nm"), dose=149.0)
    assert image.dtype == "float64" and image.sources["electrons_per_pixel"] == "dose"
    np.testing.assert_array_equal(image.counts, wide)
    negative = simulated.astype(np.int32) - 5
    with pytest.raises(InputError, match="negative counts"):
        read_stem_image(write_mrc(tmp_path / "neg.mrc", negative.astype(np.int16), 64.0))


# ----------------------------------------------------------------- without the formats extra

def test_without_the_formats_extra_microscope_files_get_one_message(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rsciio", None)  # import rsciio now fails
    for name in ("a.dm3", "a.dm4", "a.emd", "a.mrc"):
        (tmp_path / name).write_bytes(b"\0" * 64)
        with pytest.raises(InputError, match=re.escape(FORMATS_INSTALL)) as error:
            read_stem_image(tmp_path / name, pixel_size_nm=1.2)
        assert str(tmp_path / name) in str(error.value)
    # TIFFs are read as plain images, as before; the missing pixel size names the extra.
    plain = tmp_path / "plain.tif"
    iio.imwrite(plain, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    with pytest.raises(InputError, match=re.escape(FORMATS_INSTALL)):
        read_stem_image(plain)
    image, _ = read_stem_image(plain, pixel_size_nm=1.2, dose=149.0)
    assert image.pixel_size_nm == 1.2


def test_without_the_formats_extra_the_cli_gives_one_error_line(one_error_line, tmp_path):
    (tmp_path / "a.dm3").write_bytes(b"\0" * 64)
    line = one_error_line(run_tool(tmp_path / "a.dm3", f"--output={tmp_path / 'out'}",
                                   prelude="import sys; sys.modules['rsciio'] = None"))
    assert FORMATS_INSTALL in line and "a.dm3" in line


# ------------------------------------------------------------------------------ end to end

@needs_formats
def test_cli_signal_errors_come_before_the_networks(one_error_line, tmp_path, simulated):
    folder = tmp_path / "emd"
    folder.mkdir()
    write_emd(folder / "a.emd", [("BF", simulated), ("DF4", simulated)], PIXEL_NM, "nm")
    line = one_error_line(run_tool(folder, f"--output={tmp_path / 'out'}"))
    assert "none is named HAADF" in line and "'BF'" in line and "'DF4'" in line
    line = one_error_line(run_tool(folder, "--signal=ADF", f"--output={tmp_path / 'out'}"))
    assert "no signal named 'ADF'" in line


@pytest.mark.slow
@needs_formats
def test_characterize_on_microscope_files_equals_the_same_images_as_png(tmp_path):
    """The example's 12 images as TIFF (nm), NCEM EMD (Å, beside a BF signal) and MRC files
    give the θ̂ of the same counts as plain PNGs with --pixel_size_nm."""
    microscope, plain = tmp_path / "microscope", tmp_path / "png"
    microscope.mkdir()
    plain.mkdir()
    for index, path in enumerate(sorted(EXAMPLE.glob("*.png"))):
        counts, metadata = read_stem_png(path)
        pixel = metadata["pixel_size_nm"]
        iio.imwrite(plain / path.name, counts)  # no hagg_tf metadata
        kind = index % 3
        if kind == 0:
            write_tiff(microscope / f"{path.stem}.tif", counts, pixel, "nm")
        elif kind == 1:
            write_emd(microscope / f"{path.stem}.emd",
                      [("BF", (counts.max() - counts).astype(np.uint16)), ("HAADF", counts)],
                      pixel * 10.0, "Å")
        else:
            write_mrc(microscope / f"{path.stem}.mrc", counts, pixel * 10.0)
    common = ["--dose=149", "--shadows=4", "--nofigure", "--noxyz", "--quiet"]
    # Both runs at once: each spends most of its time importing TensorFlow on one core.
    runs = {name: start_tool(folder, f"--output={tmp_path / name}", *common, *extra)
            for name, folder, extra in (("microscope", microscope, []),
                                        ("png", plain, [f"--pixel_size_nm={pixel}"]))}
    reports = {}
    for name, process in runs.items():
        result = finish(process)
        assert result.returncode == 0, result.stderr
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["microscope"]["theta_hat"] == reports["png"]["theta_hat"]
    images = reports["microscope"]["images"]
    assert {image["microscope_file"]["format"] for image in images} == {"TIFF", "EMD", "MRC"}
    assert all(image["sources"]["pixel_size_nm"] == "metadata" for image in images)
