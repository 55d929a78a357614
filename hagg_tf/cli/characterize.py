"""Characterize a sample from its HAADF-STEM images: θ̂, digital shadows, descriptors.

Examples:
  hagg-characterize examples/sample_a
  hagg-characterize samples/*/ --output=work/run7      (many samples: one per folder)
  hagg-characterize --samples_from=samples.csv
  hagg-characterize 'data/run7/*.tif' --pixel_size_nm=0.9 --dose=120 --shadows=800
  hagg-characterize img01.png img02.png ... --models=work/saved_models --output=work/run7

Input: a folder, glob or files of 16-bit, 8-bit or float greyscale PNG/TIFF images of one
sample (at least ν = 12 by default; more are used too), or microscope files (DigitalMicrograph
.dm3/.dm4, Velox or NCEM .emd, .mrc, calibrated TIFF; needs pip install 'hagg_tf[formats]'),
whose pixel size comes from the file and whose HAADF image is chosen by its name (--signal
chooses another, by title, detector or index). hagg_tf's own PNGs carry pixel size and dose;
for other images give --pixel_size_nm, and --dose or --electrons_per_pixel. Only 16-bit
images are taken as detector counts: 8-bit and float images need --electrons_per_pixel, the
value the whole incident beam would have in the image (1 for intensities as fractions of the
beam). Images at another pixel size are resampled to the networks' (with a warning) and padded
or cropped to their input size (with a note).

Output (default work/characterize/<name of the folder>): one line per estimated quantity
(what it means, its value, its typical error from the model card; the shadows' descriptors with
their spread), and the files report.json (θ̂ with every network's raw output, the shadows'
descriptors, the quantities' meanings, warnings, timings), report.html (the same as a
self-contained page: images with scale bars, θ̂ and what it means, histograms, warnings),
shadows.npz and shadows.xyz (the first 1000 digital shadows) and characterize.png.
--shadows is at most 100 000; runs of more than 500 shadows show a progress bar on stderr.
Bad input: one 'error:' line, exit status 2; so are images whose field of view cannot show an
aggregate (an atomic-resolution image, say).
Images unlike the networks' training images (background, blur, pixel size, an
aggregate cut by the border) and raw θ̂ outside the trained range get a 'warning:' line naming
what is off (docs/learning.md, "When the answer cannot be trusted").

The digital shadows look like the sample: their particle radius distribution (log-normal mean
and s.d.) and particles per aggregate are estimated from the images (docs/learning.md,
"Particle sizes of the digital shadows") unless given with --radius_mean_nm, --radius_sd_nm and
--particles (a count or a range min-max); the console says which, and report.json records the
values and where they came from. The paper's fixed model: --particles=20-80
--radius_mean_nm=12 --radius_sd_nm=3.

θ̂ comes with its uncertainty: a bootstrap over the sample's images (--resamples, default 200;
0 switches it off), printed as "θ_Df = 1.817 ± 0.021 (68 %: 1.796–1.838)" (bootstrap s.d. and
68 % percentile interval) and recorded in report.json ("uncertainty": s.d., 68 % and 95 %
intervals, the cluster sizes' distribution). The digital shadows are drawn over it: shadow k
from bootstrap replicate k mod B, so that the descriptors' spread includes θ̂'s uncertainty
(--shadow_theta=estimate draws every shadow from θ̂ alone; report.json says which).

Many samples in one run: several folders (samples/*/), or --samples_from=list.csv (a header
row with the column 'folder', relative to the CSV's folder, and optional columns 'name',
'pixel_size_nm', 'electrons_per_pixel', 'dose' for that sample; empty cells take the flags),
or --batch with one folder. Each folder is one sample; the networks are loaded once; a progress
bar on stderr shows sample i/N, elapsed and remaining time. Each sample's usual files go to
<output>/<sample name>/ (two folders of the same name: <name>, <name>-2, … in the order given),
and <output>/summary.csv (default output work/characterize/<parent folder or list name>) has
one row per sample: θ̂ with its bootstrap s.d. and 95 % interval, the shadows' descriptor means
and s.d., warnings, status ok/error (and the error). It is rewritten after each sample. A sample
that fails gets status 'error' and a 'warning:' line, and the run goes on; the exit status is 2
only if every sample failed (or the run's own flags are bad), else 0. Rerun with the same
--output to resume: samples whose report.json is complete and was made with the same images
and settings are kept (--overwrite computes them again).
"""
from __future__ import annotations

import os
import pathlib
import sys
import textwrap
import time

from absl import flags

from hagg_tf.cli import (check_output_dir, define_float, define_pixel_size, define_runner_flags,
                         define_seed, fail, run_tool, runner_and_beam_args)
from hagg_tf.data.beam import IN_PROCESS_RUNNERS
from hagg_tf.estimation.sample_size import (MAX_PARTICLES, MAX_RADIUS_CV, RADIUS_MEAN_RANGE_NM,
                                           SampleSizeError, check_radius, parse_particles)
from hagg_tf.estimation.shadows import FORK_PARALLEL_THRESHOLD, PARALLEL_THRESHOLD
from hagg_tf.estimation.uncertainty import DEFAULT_RESAMPLES, MAX_RESAMPLES, MIN_RESAMPLES

_MODELS = flags.DEFINE_string(
    "models", None, "Composite SavedModel (export base, model or version directory); default: "
    "the shipped saved_models/ ($HAGG_TF_MODELS overrides).")
_OUTPUT = flags.DEFINE_string("output", None,
                              "Output directory (default work/characterize/<input name>).")
_PIXEL_SIZE = define_pixel_size(None, "Pixel size of the images, nm (for images without "
                                "hagg_tf metadata; overrides it otherwise).")
_ELECTRONS = define_float("electrons_per_pixel", None,
                          "Incident electrons per pixel, > 0 (8-bit: grey value of the full "
                          "beam).", positive=True)
_DOSE = define_float("dose", None, "Electron dose, e/Å², > 0, for 16-bit images without "
                     "metadata (default: the paper's 149, with a warning).", positive=True)
_SIGNAL = flags.DEFINE_string(
    "signal", None, "Signal to take from microscope files with several (Velox: one per "
    "detector): its title or detector name, or its index; default: the only image, else the "
    "one named HAADF.")
_SHADOWS = flags.DEFINE_integer("shadows", 100, "Digital shadows to draw (the paper: 800).")
_RADIUS_MEAN = define_float(
    "radius_mean_nm", None, "Mean particle radius of the digital shadows, nm; default: "
    "estimated from the images (their round single-particle domes).",
    lower_bound=RADIUS_MEAN_RANGE_NM[0], upper_bound=RADIUS_MEAN_RANGE_NM[1])
_RADIUS_SD = define_float(
    "radius_sd_nm", None, f"s.d. of the shadows' particle radius, nm, > 0 (s.d./mean at most "
    f"{MAX_RADIUS_CV:g}); default: estimated from the images.", positive=True)
_PARTICLES = flags.DEFINE_string(
    "particles", None, "Particles per aggregate of the digital shadows: a count ('40': every "
    "shadow has 40) or a range ('20-80': uniform on 20…80), within 1–"
    f"{MAX_PARTICLES}; default: estimated per image from its integrated intensity. The paper's "
    "fixed model: --particles=20-80 --radius_mean_nm=12 --radius_sd_nm=3.")
_SEED = define_seed(0, "Seed of the digital shadows and of the bootstrap's resampling.")
_WORKERS = flags.DEFINE_integer("workers", None, "Processes drawing shadows (default: all "
                                f"cores above {FORK_PARALLEL_THRESHOLD} shadows where workers "
                                "can be forked, i.e. on Linux without TensorFlow in the "
                                f"process; else above {PARALLEL_THRESHOLD}).", lower_bound=1)
_FIGURE = flags.DEFINE_bool("figure", True, "Write characterize.png (needs matplotlib).")
_XYZ = flags.DEFINE_bool("xyz", True, "Also write the shadows as extended XYZ.")
_QUIET = flags.DEFINE_bool("quiet", False, "Print only the result lines.")
_RUNTIME = flags.DEFINE_enum(
    "runtime", "auto", ["auto", "litert", "savedmodel"], "Runtime of the networks: 'litert' "
    "(the export's characterize.tflite on ai-edge-litert, no TensorFlow: a fast start), "
    "'savedmodel' (TensorFlow) or 'auto' (LiteRT where the export has a current conversion and "
    "ai-edge-litert is installed, else TensorFlow).")
_RUNNER, _BEAM_ARGS = define_runner_flags("the digital shadows' descriptors")
_RESAMPLES = flags.DEFINE_integer(
    "resamples", DEFAULT_RESAMPLES, "Bootstrap resamples of the images for θ̂'s uncertainty "
    f"(0: none; else at least {MIN_RESAMPLES}).", lower_bound=0, upper_bound=MAX_RESAMPLES)
_SHADOW_THETA = flags.DEFINE_enum(
    "shadow_theta", None, ["bootstrap", "estimate"], "θ of the digital shadows: 'bootstrap' "
    "(shadow k from bootstrap replicate k mod --resamples: the descriptors' spread includes "
    "θ̂'s uncertainty) or 'estimate' (all from θ̂); default: bootstrap, estimate with "
    "--resamples=0.")
_SAMPLES_FROM = flags.DEFINE_string(
    "samples_from", None, "CSV list of samples, one folder each (columns: folder, and "
    "optionally name, pixel_size_nm, electrons_per_pixel, dose); writes <output>/<name>/ per "
    "sample and <output>/summary.csv.")
_BATCH = flags.DEFINE_bool(
    "batch", None, "Treat each folder given as one sample (default: so when two or more "
    "folders are given; --nobatch: all folders' images are one sample).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Many samples: compute every sample again, also those an earlier run "
    "with the same --output finished with the same settings.")



def _default_output(inputs: list[str]) -> pathlib.Path:
    first = pathlib.Path(inputs[0])
    name = first.name if first.is_dir() else (first.parent.name or "sample")
    if any(character in inputs[0] for character in "*?["):
        name = pathlib.Path(inputs[0].split("*")[0].split("?")[0].split("[")[0]).name or \
            "sample"
    return pathlib.Path("work") / "characterize" / (name or "sample")


def main(argv):
    started = time.perf_counter()
    runner, beam_args = runner_and_beam_args(argv, _RUNNER, _BEAM_ARGS, positional=True)
    inputs = list(argv[1:])
    if "--" in sys.argv:  # Beam's options after '--' reach main too; they are not images
        inputs = inputs[:len(inputs) - (len(sys.argv) - sys.argv.index("--") - 1)]
    from hagg_tf.estimation import (InputError, find_image_files, find_model, format_summary,
                                    load_stem_images)
    from hagg_tf.estimation.images import check_resampling

    if not inputs and _SAMPLES_FROM.value is None:
        fail("no images given: hagg-characterize FOLDER | GLOB | FILES... (PNG, TIFF or "
             "microscope files), or many samples: FOLDER FOLDER ... | --samples_from=LIST.csv")
    if inputs and _SAMPLES_FROM.value is not None:
        fail("give the sample folders or --samples_from, not both")
    from hagg_tf.estimation.shadows import MAX_SHADOWS
    if _SHADOWS.value < 1:
        fail(f"--shadows must be at least 1, got {_SHADOWS.value}")
    if _SHADOWS.value > MAX_SHADOWS:
        fail(f"--shadows={_SHADOWS.value} is above the maximum of {MAX_SHADOWS} (10–20 ms of "
             f"CPU each: {MAX_SHADOWS} take 15–30 CPU minutes, and their means are already "
             "11× more precise than over the paper's 800)")
    # Everything that can be checked without TensorFlow is checked first: bad input fails in a
    # second, not after the few seconds TensorFlow takes to load. (The flags' bounds, workers
    # ≥ 1, finite positive pixel size, dose and electrons per pixel, were checked by absl.)
    try:
        check_radius(_RADIUS_MEAN.value, _RADIUS_SD.value)
        particles = None if _PARTICLES.value is None else parse_particles(_PARTICLES.value)
    except SampleSizeError as error:
        fail(str(error))
    from hagg_tf.estimation.uncertainty import check_resamples
    try:
        check_resamples(_RESAMPLES.value)
    except ValueError as error:
        fail(f"--resamples={_RESAMPLES.value}: {error}")
    if _SHADOW_THETA.value == "bootstrap" and not _RESAMPLES.value:
        fail("--shadow_theta=bootstrap needs --resamples > 0")
    if _is_batch(inputs):
        return _run_batch(inputs, particles, runner, beam_args, started)
    if _OVERWRITE.value:
        fail("--overwrite is for many samples (several folders, --batch or --samples_from)")
    output = check_output_dir(_OUTPUT.value or _default_output(inputs))
    try:
        paths, notes = find_image_files(inputs)
        images, warnings = load_stem_images(paths, pixel_size_nm=_PIXEL_SIZE.value,
                                            electrons_per_pixel=_ELECTRONS.value,
                                            dose=_DOSE.value, signal=_SIGNAL.value)
        from hagg_tf.estimation.domain import refuse_if_cannot_show_aggregate
        refuse_if_cannot_show_aggregate(images)
    except InputError as error:
        fail(str(error))
    try:
        version_dir, metadata = find_model(_MODELS.value)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))  # names --models and $HAGG_TF_MODELS
    num_images = int(metadata["num_images"])
    if len(images) < num_images:
        fail(f"{len(images)} image(s) found, but the networks need at least nu = {num_images} "
              f"images of the sample ({', '.join(pathlib.Path(p).name for p in paths[:4])}"
              f"{' …' if len(paths) > 4 else ''})")
    try:
        check_resampling(images, metadata.get("pixel_size_nm"))
    except InputError as error:
        fail(str(error))

    checked = time.perf_counter()
    # TensorFlow's C++ runtime logs non-fatal notices at error level (e.g. that oneDNN runs the
    # float16 → float32 casts of the stored kernels without AVX-512 FP16); real failures still
    # arrive as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hagg_tf.estimation import characterize, write_outputs
    from hagg_tf.estimation.characterize import collapse_warnings, placeholder_warning
    from hagg_tf.estimation.model import load_characterize_model

    imported = time.perf_counter()
    try:
        # LiteRT needs no TensorFlow; the SavedModel's runtime imports it here.
        model = load_characterize_model(version_dir, _RUNTIME.value)
    except ValueError as error:
        fail(str(error))
    loaded = time.perf_counter()
    try:
        result = characterize(images, model=model, shadows=_SHADOWS.value, seed=_SEED.value,
                              workers=_WORKERS.value, radius_mean_nm=_RADIUS_MEAN.value,
                              radius_sd_nm=_RADIUS_SD.value, particles=particles,
                              progress=not _QUIET.value,
                              runner=runner, beam_args=beam_args,
                              resamples=_RESAMPLES.value, shadow_theta=_SHADOW_THETA.value,
                              # a cluster's workers share the blocks through the output folder
                              shadow_work_dir=(None if runner in IN_PROCESS_RUNNERS
                                               else output / "shadow-blocks"))
    except InputError as error:
        fail(str(error))
    result.timings.update(check_input=checked - started, import_modules=imported - checked,
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
    if not _QUIET.value:
        size = model.image_size
        print(f"{len(images)} images, prepared as {size}×{size} px at "
              f"{model.pixel_size_nm or '?'} nm/px for the networks in {version_dir}")
    for warning in collapse_warnings([item for item in result.warnings if item != placeholder]):
        print(f"warning: {warning}", file=sys.stderr)
    if not _QUIET.value:
        for note in collapse_warnings(result.notes):
            print(f"note: {note}", file=sys.stderr)
    print(format_summary(result))
    if not _QUIET.value:
        timings = result.timings
        print(f"wrote {output}/: " + ", ".join(path.name for path in files.values()))
        runtime = ("LiteRT" if getattr(model, "runtime", None) == "litert" else
                   "TensorFlow SavedModel, its import included")
        print(f"time: {total:.1f} s in all: check input {timings['check_input']:.1f}, import "
              f"{timings['import_modules']:.1f}, load model ({runtime}) "
              f"{timings['load_model']:.1f}, prepare {timings['prepare_images']:.1f}, networks "
              f"{timings['networks']:.1f}, particle sizes {timings['sample_size']:.1f}, shadows "
              f"{timings['shadows']:.1f}, write "
              f"{time.perf_counter() - written:.1f}")


def _is_batch(inputs: list[str]) -> bool:
    """Many samples: --samples_from, --batch, or (unless --nobatch) two or more folders."""
    if _SAMPLES_FROM.value is not None:
        return True
    if _BATCH.value is not None:
        return _BATCH.value
    return len(inputs) >= 2 and all(pathlib.Path(item).is_dir() for item in inputs)


def _run_batch(inputs: list[str], particles, runner: str, beam_args: list[str],
               started: float) -> None:
    """Many samples in one run (hagg_tf.estimation.batch); exit status 2 if all failed."""
    from hagg_tf.estimation import InputError, find_model
    from hagg_tf.estimation.batch import (characterize_samples, default_batch_output,
                                          describe_row, read_sample_list, samples_from_folders)

    try:
        if _SAMPLES_FROM.value is not None:
            samples = read_sample_list(_SAMPLES_FROM.value)
        else:
            folders = [item for item in inputs if not pathlib.Path(item).is_dir()]
            if folders:
                fail(f"{folders[0]}: not a folder; many samples are given as folders, one per "
                     "sample")
            samples = samples_from_folders(inputs)
    except InputError as error:
        fail(str(error))
    output = check_output_dir(_OUTPUT.value or default_batch_output(_SAMPLES_FROM.value, inputs))
    try:
        version_dir, _ = find_model(_MODELS.value)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hagg_tf.estimation.model import load_characterize_model

    try:
        model = load_characterize_model(version_dir, _RUNTIME.value)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    loaded = time.perf_counter()
    if not _QUIET.value:
        print(f"{len(samples)} samples; networks in {version_dir} loaded in "
              f"{loaded - started:.1f} s")

    def report_sample(number, spec, row):
        if not _QUIET.value and row["status"] == "ok":  # failures had their warning line
            from tqdm import tqdm

            tqdm.write(describe_row(row), file=sys.stdout)

    options = {"shadows": _SHADOWS.value, "seed": _SEED.value, "workers": _WORKERS.value,
               "radius_mean_nm": _RADIUS_MEAN.value, "radius_sd_nm": _RADIUS_SD.value,
               "particles": particles, "runner": runner, "beam_args": list(beam_args),
               "resamples": _RESAMPLES.value, "shadow_theta": _SHADOW_THETA.value,
               "pixel_size_nm": _PIXEL_SIZE.value, "electrons_per_pixel": _ELECTRONS.value,
               "dose": _DOSE.value}
    result = characterize_samples(samples, output, model=model, options=options,
                                  signal=_SIGNAL.value, figure=_FIGURE.value, xyz=_XYZ.value,
                                  overwrite=_OVERWRITE.value, progress=not _QUIET.value,
                                  on_sample=report_sample)
    total = time.perf_counter() - started
    if result.all_failed:
        fail(f"every sample failed ({len(samples)}); the reasons are in {result.summary_path}")
    finished = len(samples) - result.failed
    print(f"wrote {result.summary_path}: {finished} of {len(samples)} samples ok "
          f"({result.resumed} kept from an earlier run), {result.failed} failed; "
          f"{total:.1f} s in all")


def run():
    run_tool(main, arguments="FOLDER | GLOB | FILE ... | SAMPLE_FOLDER ...")


if __name__ == "__main__":
    run()
