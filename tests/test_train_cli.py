"""``hagg-train`` and ``hagg-export-models`` on the tiny preset, and ``export_from_runs``.

The commands run as ``python -m hagg_tf.cli.<tool>`` subprocesses (each tool's flags live in
absl's global registry, so two tools cannot share one process).

The exports read five run folders. Training five networks would dominate the run time, so one
run is real (``hagg-train`` through the pooled path, compact architecture, one step) and the
other four are written like it: a network of the same architecture and size saved as its
checkpoints, with the real run's ``training.json`` and ``history.csv``. The export reads files,
not how they were made.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import hagg_tf  # noqa: E402
from hagg_tf import networks  # noqa: E402
from hagg_tf.estimation.estimators import cyclic_subsets  # noqa: E402
from hagg_tf.export.saved_model import DOSE_INPUT, IMAGES_INPUT  # noqa: E402
from hagg_tf.training import (BACKUP, BEST_MODEL, HISTORY, LAST_MODEL, SUMMARY,  # noqa: E402
                              backup_epoch, load_trained_network, read_history)
from hagg_tf.export.from_training import (NETWORK_NAMES, TRAINING_LOG,  # noqa: E402
                                          export_from_runs)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

NUM_IMAGES = 2
COMPACT_SIZE = networks.minimum_image_size("compact")
#: The network of the real run; the others are written like it.
TRAINED = "fractal_dimension"
#: The run whose best checkpoint differs from its last one.
TWO_CHECKPOINTS = "mixing_ratio_regressor"


def run_tool(tool, *flags, cwd):
    """Runs ``python -m hagg_tf.cli.<tool> <flags>``; returns the CompletedProcess.

    The subprocess imports the same hagg_tf as this test (its folder goes first on the path).
    """
    package_root = str(pathlib.Path(hagg_tf.__file__).resolve().parents[1])
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root,
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", f"hagg_tf.cli.{tool}", *map(str, flags)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- hagg-train -------------------------------------------------------------------------------

def test_hagg_train_writes_a_complete_run_folder(tiny_database, tmp_path):
    database = tiny_database(networks.minimum_image_size())
    run = tmp_path / "df"
    done = run_tool("train", "--network=fractal_dimension", f"--dataset={database}",
                    f"--output={run}", "--epochs=2", "--steps_per_epoch=1", "--batch_size=4",
                    "--verify=size", "--verbose=0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fractal_dimension: epochs 0→2" in done.stdout
    assert "stopped early" not in done.stdout

    summary = json.loads((run / SUMMARY).read_text())
    assert summary["network"] == "fractal_dimension" and summary["status"] == "complete"
    assert summary["final_epoch"] == 2 and summary["epochs"] == 2
    assert summary["batch_size"] == 4 and summary["steps_per_epoch"] == 1
    assert summary["images_seen"] == 2 * 1 * 4
    assert summary["image_size"] == networks.minimum_image_size()
    assert summary["monitor"] == "val_loss" and summary["dataset"] == str(database)
    rows = read_history(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert all(np.isfinite(row["loss"]) and np.isfinite(row["val_loss"]) for row in rows)
    assert summary["best"]["val_loss"] == min(row["val_loss"] for row in rows)
    assert summary["history_last"] == rows[-1]
    assert backup_epoch(run) == 2 and (run / BACKUP / "latest.weights.h5").is_file()
    assert (run / BEST_MODEL).is_file() and (run / LAST_MODEL).is_file()
    for which in ("best", "last"):
        model = load_trained_network(run, which)
        assert model.name == "fractal_dimension"
        assert model.input_shape == (None, summary["image_size"], summary["image_size"], 1)


@pytest.fixture(scope="module")
def trained_run(tiny_database, tmp_path_factory):
    """``hagg-train`` through the pooled path: (run folder, cache folder, CompletedProcess)."""
    root = tmp_path_factory.mktemp("pooled_cli")
    run, cache = root / TRAINED, root / "cache"
    done = run_tool("train", f"--network={TRAINED}", f"--dataset={tiny_database(COMPACT_SIZE)}",
                    f"--output={run}", "--architecture=compact", f"--pooled_cache={cache}",
                    "--epochs=1", "--steps_per_epoch=2", "--batch_size=2",
                    "--calibration_batches=1", "--workers=1", "--verbose=0", cwd=root)
    return run, cache, done


def test_hagg_train_pooled_path_builds_the_cache_and_trains_the_compact_network(trained_run):
    run, cache, done = trained_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{TRAINED}: epochs 0→1" in done.stdout
    settings = json.loads((cache / "cache.json").read_text())
    assert settings["pooling"] == networks.get_architecture("compact").input_pooling
    assert settings["image_size"] == COMPACT_SIZE
    assert len(list(cache.glob("train-*.npz"))) == 2  # one part per shard of the tiny preset
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["architecture"] == "compact" and summary["status"] == "complete"
    assert summary["final_epoch"] == 1 and summary["steps_per_epoch"] == 2
    assert summary["images_seen"] == 1 * 2 * 2 and summary["monitor"] == "val_loss"
    assert [int(row["epoch"]) for row in read_history(run)] == [0]
    assert (run / BEST_MODEL).is_file() and (run / LAST_MODEL).is_file()
    for which in ("best", "last"):
        model = load_trained_network(run, which)
        assert networks.architecture_of(model).name == "compact"
        assert model.input_shape == (None, COMPACT_SIZE, COMPACT_SIZE, 1)


# --- exports ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(trained_run):
    """``<runs>/<network>/`` of all five networks (see the module docstring)."""
    run, _, done = trained_run
    assert done.returncode == 0, done.stderr[-3000:]
    runs = run.parent
    summary = json.loads((run / SUMMARY).read_text())
    keras.utils.set_random_seed(5)
    for name in NETWORK_NAMES:
        if name == TRAINED:
            continue
        (runs / name).mkdir()
        model = networks.build_network(name, COMPACT_SIZE, num_images=NUM_IMAGES,
                                       architecture="compact")
        model.save(runs / name / LAST_MODEL)
        if name == TWO_CHECKPOINTS:
            for weight in model.trainable_weights:
                weight.assign(weight + 0.05)
        model.save(runs / name / BEST_MODEL)
        shutil.copy(run / HISTORY, runs / name / HISTORY)
        (runs / name / SUMMARY).write_text(json.dumps({
            **summary, "network": name,
            "num_images": NUM_IMAGES if networks.network_spec(name).multi_image else 1}))
    return runs


def _models(runs, which):
    return {name: load_trained_network(runs / name, which) for name in NETWORK_NAMES}


def assert_composite_computes(version_dir, models):
    """The composite SavedModel, loaded by plain TensorFlow, gives the Keras networks' outputs."""
    rng = np.random.default_rng(2)
    # One sample of ν preprocessed images: the multi-image networks see the ν rotations of it.
    images, inverted = rng.uniform(-0.5, 0.5, (2, 1, NUM_IMAGES, COMPACT_SIZE,
                                               COMPACT_SIZE)).astype(np.float32)
    loaded = tf.saved_model.load(str(version_dir))
    outputs = loaded.signatures["serving_preprocessed"](images=tf.constant(images),
                                                        inverted_images=tf.constant(inverted))
    for name, key in (("fractal_dimension", "fractal_dimension_per_image"),
                      ("mixing_ratio_regressor", "mixing_ratio_regressor_per_image"),
                      ("mixing_ratio_classifier", "homogeneous_probability_per_image")):
        expected = np.asarray(models[name](images[0, ..., None], training=False))[:, 0]
        np.testing.assert_allclose(outputs[key].numpy()[0], expected, atol=1e-5)
    rotations = cyclic_subsets(NUM_IMAGES, NUM_IMAGES)
    for name, source in (("wo3_cluster_size", images), ("tio2_cluster_size", inverted)):
        expected = np.asarray(models[name](source[0][rotations][..., None], training=False))
        np.testing.assert_allclose(outputs[f"{name}_per_subset"].numpy()[0], expected[:, 0],
                                   atol=1e-4)


def test_export_from_runs_writes_the_best_networks_and_their_card(runs, tmp_path):
    written = export_from_runs(runs, tmp_path / "saved", kernel_dtype="float32")
    assert written["composite"] == tmp_path / "saved" / "characterize" / "1"
    assert not (tmp_path / "saved" / TRAINED).exists()  # per-network exports not asked for
    best = _models(runs, "best")
    assert_composite_computes(written["composite"], best)
    # (The two checkpoints of that run compute different numbers, so the choice shows.)
    images = np.random.default_rng(4).uniform(-0.5, 0.5, (2, COMPACT_SIZE, COMPACT_SIZE, 1))
    assert not np.allclose(best[TWO_CHECKPOINTS](images, training=False),
                           load_trained_network(runs / TWO_CHECKPOINTS, "last")(
                               images, training=False), atol=1e-3)

    # The model card is each run's training.json; the training log lists every epoch.
    card = written["model_card"]
    assert card["status"] == "trained"
    metadata = json.loads((written["composite"] / "hagg_tf_export.json").read_text())
    assert metadata["model_card"] == json.loads(json.dumps(card))
    assert metadata["pixel_size_nm"] == json.loads((runs / TRAINED / SUMMARY).read_text())[
        "pixel_size_nm"]
    log = (written["composite"] / TRAINING_LOG).read_text()
    for name in NETWORK_NAMES:
        summary = json.loads((runs / name / SUMMARY).read_text())
        entry = card["training"][name]
        assert entry["final_epoch"] == summary["final_epoch"] == 1
        assert entry["images_seen"] == summary["images_seen"] == 4
        assert entry["architecture"] == "compact" and entry["status"] == "complete"
        assert f"| {name} | compact | 1 | 4 |" in log and f"## {name}" in log
    assert card["summary"].startswith("compact architecture, trained for 1/1/1/1/1 epochs "
                                      "(20 image passes")


def test_export_from_runs_refuses_runs_of_different_pixel_sizes(runs, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    for name, pixel_size in ((TRAINED, 1.2), ("tio2_cluster_size", 2.4)):
        path = copy / name / SUMMARY
        path.write_text(json.dumps({**json.loads(path.read_text()),
                                    "pixel_size_nm": pixel_size}))
    with pytest.raises(ValueError, match="different pixel sizes"):
        export_from_runs(copy, tmp_path / "saved", kernel_dtype="float32")
    assert not (tmp_path / "saved").exists()


def test_hagg_export_models_writes_per_network_savedmodels_of_the_chosen_checkpoint(runs,
                                                                                  tmp_path):
    output = tmp_path / "saved"
    done = run_tool("export_models", f"--runs={runs}", f"--output={output}", "--which=last",
                    "--per_network", "--nocomposite", "--version=2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (output / "characterize").exists()
    last = _models(runs, "last")
    rng = np.random.default_rng(3)
    for name in NETWORK_NAMES:
        version_dir = output / name / "2"
        assert f"{name}: {version_dir}" in done.stdout
        # Raw detector counts in: the preprocessing is part of the SavedModel.
        spec = networks.network_spec(name)
        leading = (2, NUM_IMAGES) if spec.multi_image else (2,)
        counts = rng.poisson(20.0, leading + (COMPACT_SIZE, COMPACT_SIZE)).astype(np.float32)
        dose = np.full(leading, 50.0, np.float32)
        threshold = networks.INVERSION_THRESHOLD if spec.invert_intensities else None
        expected = np.asarray(last[name](networks.preprocess_images_numpy(
            counts, dose, inversion_threshold=threshold)[..., None], training=False))[:, 0]
        feed = {IMAGES_INPUT: tf.constant(counts)}
        if spec.invert_intensities:
            feed[DOSE_INPUT] = tf.constant(dose)
        served = tf.saved_model.load(str(version_dir)).signatures["serving_default"](**feed)
        np.testing.assert_allclose(served[spec.output_name].numpy(), expected, atol=1e-5)


def test_hagg_export_models_names_the_missing_runs(runs, tmp_path):
    partial = tmp_path / "runs"
    shutil.copytree(runs, partial)
    (partial / "wo3_cluster_size" / LAST_MODEL).unlink()
    shutil.rmtree(partial / "mixing_ratio_classifier")
    done = run_tool("export_models", f"--runs={partial}", f"--output={tmp_path / 'saved'}",
                    cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [error] = _error_lines(done.stderr)
    assert "wo3_cluster_size" in error and "mixing_ratio_classifier" in error
    assert TRAINED not in error and TWO_CHECKPOINTS not in error
    assert not (tmp_path / "saved").exists()
