"""Characterize a sample from its HAADF-STEM images: θ̂, digital shadows, descriptors.

Examples:
  hagg-characterize examples/sample_a
  hagg-characterize 'data/run7/*.tif' --pixel_size_nm=0.9 --dose=120 --shadows=800
  hagg-characterize img01.png img02.png ... --models=work/saved_models --output=work/run7

Input: a folder, glob or files of 16-bit or 8-bit greyscale PNG/TIFF images of one sample (at
least ν = 12 by default; more are used too). hagg_tf's own PNGs carry pixel size and dose; for
other images give --pixel_size_nm, and --dose or --electrons_per_pixel (8-bit images need
--electrons_per_pixel, the grey value of the unscattered beam). Images at another pixel size are
resampled to the networks' (with a warning) and padded or cropped to their input size.

Output (default work/characterize/<name of the folder>): report.json (θ̂ with every network's
raw output, the shadows' descriptors, warnings, timings), shadows.npz and shadows.xyz (the
digital shadows) and characterize.png. Bad input: one 'error:' line, exit status 2.
"""
from __future__ import annotations

import os
import pathlib
import sys
import textwrap
import time

from absl import app, flags

from hagg_tf.cli import fail

_MODELS = flags.DEFINE_string(
    "models", None, "Composite SavedModel (export base, model or version directory); default: "
    "the shipped saved_models/ ($HAGG_TF_MODELS overrides).")
_OUTPUT = flags.DEFINE_string("output", None,
                              "Output directory (default work/characterize/<input name>).")
_PIXEL_SIZE = flags.DEFINE_float("pixel_size_nm", None,
                                 "Pixel size of the images, nm (for images without hagg_tf "
                                 "metadata; overrides it otherwise).")
_ELECTRONS = flags.DEFINE_float("electrons_per_pixel", None,
                                "Incident electrons per pixel (8-bit: grey value of the full "
                                "beam).")
_DOSE = flags.DEFINE_float("dose", None, "Electron dose, e/Å², for 16-bit images without "
                           "metadata (default: the paper's 149, with a warning).")
_SHADOWS = flags.DEFINE_integer("shadows", 100, "Digital shadows to draw (the paper: 800).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the digital shadows.")
_WORKERS = flags.DEFINE_integer("workers", None, "Processes drawing shadows (default: one up "
                                "to 200 shadows, else all cores).")
_FIGURE = flags.DEFINE_bool("figure", True, "Write characterize.png (needs matplotlib).")
_XYZ = flags.DEFINE_bool("xyz", True, "Also write the shadows as extended XYZ.")
_QUIET = flags.DEFINE_bool("quiet", False, "Print only the result lines.")



def _default_output(inputs: list[str]) -> pathlib.Path:
    first = pathlib.Path(inputs[0])
    name = first.name if first.is_dir() else (first.parent.name or "sample")
    if any(character in inputs[0] for character in "*?["):
        name = pathlib.Path(inputs[0].split("*")[0].split("?")[0].split("[")[0]).name or \
            "sample"
    return pathlib.Path("work") / "characterize" / (name or "sample")


def main(argv):
    started = time.perf_counter()
    inputs = list(argv[1:])
    from hagg_tf.estimation import (InputError, find_image_files, find_model, format_summary,
                                    load_stem_images)

    if not inputs:
        fail("no images given: hagg-characterize FOLDER | GLOB | FILES... (PNG or TIFF)")
    if _SHADOWS.value < 1:
        fail(f"--shadows must be at least 1, got {_SHADOWS.value}")
    if _WORKERS.value is not None and _WORKERS.value < 1:
        fail(f"--workers must be at least 1, got {_WORKERS.value}")
    for flag in (_PIXEL_SIZE, _ELECTRONS, _DOSE):
        if flag.value is not None and not flag.value > 0:
            fail(f"--{flag.name} must be positive, got {flag.value}")
    # Everything that can be checked without TensorFlow is checked first: bad input fails in a
    # second, not after the few seconds TensorFlow takes to load.
    try:
        paths, notes = find_image_files(inputs)
        images, warnings = load_stem_images(paths, pixel_size_nm=_PIXEL_SIZE.value,
                                            electrons_per_pixel=_ELECTRONS.value,
                                            dose=_DOSE.value)
    except InputError as error:
        fail(str(error))
    try:
        version_dir, metadata = find_model(_MODELS.value)
    except (FileNotFoundError, ValueError) as error:
        fail(f"{error}; train and export networks (docs/learning.md) or give --models")
    num_images = int(metadata["num_images"])
    if len(images) < num_images:
        fail(f"{len(images)} image(s) found, but the networks need at least nu = {num_images} "
              f"images of the sample ({', '.join(pathlib.Path(p).name for p in paths[:4])}"
              f"{' …' if len(paths) > 4 else ''})")
    output = pathlib.Path(_OUTPUT.value) if _OUTPUT.value else _default_output(inputs)

    checked = time.perf_counter()
    # TensorFlow's C++ runtime logs non-fatal notices at error level (e.g. that oneDNN runs the
    # float16 → float32 casts of the stored kernels without AVX-512 FP16); real failures still
    # arrive as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hagg_tf.estimation import CharacterizeModel, characterize, write_outputs
    from hagg_tf.estimation.characterize import collapse_warnings, placeholder_warning
    from hagg_tf.training.runtime import import_tensorflow_quietly

    import_tensorflow_quietly()
    imported = time.perf_counter()
    try:
        model = CharacterizeModel(version_dir)
        loaded = time.perf_counter()
        result = characterize(images, model=model, shadows=_SHADOWS.value, seed=_SEED.value,
                              workers=_WORKERS.value)
    except InputError as error:
        fail(str(error))
    result.timings.update(check_input=checked - started, import_tensorflow=imported - checked,
                          load_model=loaded - imported)
    result.warnings[:0] = warnings
    result.notes[:0] = notes
    written = time.perf_counter()
    files = write_outputs(result, output, figure=_FIGURE.value, xyz=_XYZ.value)
    total = time.perf_counter() - started
    placeholder = placeholder_warning(model.model_card)
    if placeholder:
        print(textwrap.fill(placeholder, width=100, initial_indent="NOTE: ",
                            subsequent_indent="      "))
    elif not _QUIET.value and model.model_card.get("summary"):
        card = model.model_card
        print(textwrap.fill(f"networks: {card['summary']}"
                            + (f"; measured {card['accuracy_summary']}"
                               if card.get("accuracy_summary") else ""),
                            width=100, subsequent_indent="      "))
    if not _QUIET.value:
        size = model.image_size
        print(f"{len(images)} images → {size}×{size} px at {model.pixel_size_nm or '?'} nm/px; "
              f"models: {version_dir}")
        for note in result.notes:
            print(f"note: {note}")
    for warning in collapse_warnings([item for item in result.warnings if item != placeholder]):
        print(f"warning: {warning}", file=sys.stderr)
    print(format_summary(result))
    if not _QUIET.value:
        timings = result.timings
        print(f"wrote {output}/: " + ", ".join(path.name for path in files.values()))
        print(f"time: {total:.1f} s in all: check input {timings['check_input']:.1f}, import "
              f"TensorFlow {timings['import_tensorflow']:.1f}, load model "
              f"{timings['load_model']:.1f}, prepare {timings['prepare_images']:.1f}, networks "
              f"{timings['networks']:.1f}, shadows {timings['shadows']:.1f}, write "
              f"{time.perf_counter() - written:.1f}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
