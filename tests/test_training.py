"""Training runs: the loss goes down, an interrupted run resumes from its backup, strategies."""
import dataclasses
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from hagg_tf.training import (SUMMARY, TrainingConfig, TrainingError,  # noqa: E402
                              backup_epoch, load_trained_network, read_history, train,
                              train_network)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    "ignore:`shuffle=True` was passed:UserWarning")


class Interrupted(Exception):
    """Stands in for a crash or a pre-empted job."""


@pytest.fixture(scope="module")
def tiny_db(tiny_synthetic_database):
    """The tiny preset at the networks' smallest size, 156 px (tests/conftest.py)."""
    return tiny_synthetic_database


class _Interrupter(keras.callbacks.Callback):
    """Raises after ``step`` steps of epoch ``epoch``; remembers the state backed up before."""

    def __init__(self, epoch, step):
        super().__init__()
        self.epoch, self.step, self.current = epoch, step, 0
        self.backed_up = None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_epoch_end(self, epoch, logs=None):
        # Runs after BackupAndRestore wrote this epoch's backup (built-in callbacks go first).
        self.backed_up = ([np.array(w) for w in self.model.get_weights()],
                          int(self.model.optimizer.iterations.numpy()))

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch and batch + 1 == self.step:
            raise Interrupted(f"interrupted in epoch {self.epoch}")


class _Probe(keras.callbacks.Callback):
    """Records the state the resumed run starts from."""

    def __init__(self):
        super().__init__()
        self.first_epoch = None
        self.start = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.first_epoch is None:
            self.first_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.start is None:
            self.start = ([np.array(w) for w in self.model.get_weights()],
                          int(self.model.optimizer.iterations.numpy()))


def test_training_lowers_the_loss_and_resumes_after_an_interruption(tiny_db, tmp_path):
    run = tmp_path / "df"
    steps = 3
    interrupter = _Interrupter(epoch=2, step=2)
    with pytest.raises(Interrupted):
        train_network("fractal_dimension", tiny_db, run, epochs=4, steps_per_epoch=steps,
                      learning_rate=1e-3, verify="size", callbacks=[interrupter], verbose=0)
    # Two epochs were backed up; the half-finished third is lost.
    assert backup_epoch(run) == 2
    assert [int(row["epoch"]) for row in read_history(run)] == [0, 1]
    assert json.loads((run / SUMMARY).read_text())["status"] == "running"
    weights_backed_up, iterations_backed_up = interrupter.backed_up
    assert iterations_backed_up == 2 * steps

    probe = _Probe()
    result = train_network("fractal_dimension", tiny_db, run, epochs=4, steps_per_epoch=steps,
                           learning_rate=1e-3, verify="size", callbacks=[probe], verbose=0)
    # The rerun continued from the backup: epoch counter, optimiser step counter and weights.
    assert result.initial_epoch == 2 and probe.first_epoch == 2
    assert result.final_epoch == 4 and result.epochs_run == 2
    start_weights, start_iterations = probe.start
    assert start_iterations == 2 * steps
    for restored, saved in zip(start_weights, weights_backed_up):
        np.testing.assert_array_equal(restored, saved)
    rows = read_history(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    assert all("val_loss" in row for row in rows)  # the validation split (part of T)
    # Training lowers the loss: the last epoch's mean loss is below the first one's.
    assert rows[-1]["loss"] < rows[0]["loss"]
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["status"] == "complete" and summary["resumed_from_epoch"] == 2
    assert summary["monitor"] == "val_loss" and summary["batch_size"] == 16
    assert (run / "best.keras").is_file() and (run / "last.keras").is_file()
    assert (run / "backup" / "latest.weights.h5").is_file()
    assert result.images_per_second > 0

    # A finished run is left alone.
    again = train_network("fractal_dimension", tiny_db, run, epochs=4, verify="size", verbose=0)
    assert again.already_complete and again.epochs_run == 0


def test_multi_image_network_trains_and_falls_back_to_the_training_loss(tiny_db, tmp_path):
    # tiny has one validation image per θ: no validation sample of ν = 3 images exists.
    result = train_network("tio2_cluster_size", tiny_db, tmp_path / "t1", epochs=1,
                           steps_per_epoch=1, num_images=3, batch_size=2, verify="size",
                           strategy="mirrored", verbose=0)
    assert result.monitor == "loss" and result.final_epoch == 1
    summary = json.loads((tmp_path / "t1" / SUMMARY).read_text())
    assert summary["num_images"] == 3 and summary["replicas"] >= 1
    assert "no validation samples" in summary["validation"]
    assert np.isfinite(read_history(tmp_path / "t1")[0]["loss"])


def test_training_refuses_bad_settings(tiny_db, tmp_path):
    with pytest.raises(TrainingError, match="unknown network"):
        train_network("nonsense", tiny_db, tmp_path / "x")
    with pytest.raises(TrainingError, match="no manifest"):
        train_network("fractal_dimension", tmp_path / "missing", tmp_path / "y")
    with pytest.raises(TrainingError, match="epochs"):
        train_network("fractal_dimension", tiny_db, tmp_path / "z", epochs=0)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("not a training run")
    with pytest.raises(TrainingError, match="not deleting"):
        train_network("fractal_dimension", tiny_db, precious, overwrite=True)
    assert (precious / "thesis.tex").is_file()


def test_step_backups_count_finished_epochs(tiny_db, tmp_path):
    # Backing up every 3 steps of a 3-step epoch: Keras' own backup after the last step said
    # "epoch 2" after 3 epochs, and the run looked stopped early with 2 epochs of images.
    run = tmp_path / "df"
    result = train_network("fractal_dimension", tiny_db, run, epochs=3, steps_per_epoch=3,
                           batch_size=8, backup_every_steps=3, verify="size", verbose=0)
    assert result.final_epoch == 3 and not result.stopped_early
    assert backup_epoch(run) == 3
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["final_epoch"] == 3 and summary["stopped_early"] is False
    assert summary["images_seen"] == 3 * 3 * 8
    assert [int(row["epoch"]) for row in read_history(run)] == [0, 1, 2]


def test_run_interrupted_between_step_backups_keeps_its_finished_epochs(tiny_db, tmp_path):
    run = tmp_path / "df"
    settings = dict(epochs=3, steps_per_epoch=3, batch_size=8, backup_every_steps=3,
                    learning_rate=1e-3, verify="size", verbose=0)
    # Killed at the first step of epoch 1: epoch 0 is finished and has its history row.
    interrupter = _Interrupter(epoch=1, step=1)
    with pytest.raises(Interrupted):
        train_network("fractal_dimension", tiny_db, run, callbacks=[interrupter], **settings)
    assert backup_epoch(run) == 1
    first_row = read_history(run)
    assert [int(row["epoch"]) for row in first_row] == [0]
    weights_after_epoch_0, iterations = interrupter.backed_up
    assert iterations == 3

    # The resumed run starts epoch 1 from the state after epoch 0 and is killed again after
    # the step backup at its last step, before epoch 1 ends.
    probe, interrupter = _Probe(), _Interrupter(epoch=1, step=3)
    with pytest.raises(Interrupted):
        train_network("fractal_dimension", tiny_db, run, callbacks=[probe, interrupter],
                      **settings)
    assert probe.first_epoch == 1 and probe.start[1] == 3
    for restored, saved in zip(probe.start[0], weights_after_epoch_0):
        np.testing.assert_array_equal(restored, saved)
    metadata = json.loads((run / "backup" / "training_metadata.json").read_text())
    assert metadata["epoch"] == 1  # epoch 1 is unfinished: it is redone from its start
    assert read_history(run) == first_row

    result = train_network("fractal_dimension", tiny_db, run, **settings)
    assert result.initial_epoch == 1 and result.epochs_run == 2 and result.final_epoch == 3
    assert not result.stopped_early
    rows = read_history(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert rows[0] == first_row[0]  # the finished epoch's row is neither replaced nor repeated
    assert json.loads((run / SUMMARY).read_text())["images_seen"] == 3 * 3 * 8


@pytest.mark.parametrize("source", ["TFRecord pipeline", "pooled cache"])
def test_one_trainer_runs_either_batch_source_and_records_its_config(tiny_compact_cache,
                                                                      tmp_path, source):
    from hagg_tf.networks import architecture_of

    database, cache = tiny_compact_cache
    pooled_cache = cache if source == "pooled cache" else None
    run = tmp_path / "run"
    config = TrainingConfig("mixing_ratio_classifier", database, run, epochs=1,
                            steps_per_epoch=1, batch_size=4, architecture="compact",
                            pooled_cache=pooled_cache, calibration_batches=1,
                            validation_steps=1, seed=2, verify="size")
    result = train(config, verbose=0)
    assert result.final_epoch == 1 and result.monitor == "val_loss"
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["input"].startswith(source)
    # The config is written as dataclasses.asdict of the resolved config and reads back.
    resolved = config.resolved()
    assert resolved.batch_size == 4 and resolved.learning_rate == 1e-4
    assert summary["config"] == dataclasses.asdict(resolved)
    assert TrainingConfig.from_run(run) == resolved
    assert architecture_of(load_trained_network(run, "last")).name == "compact"
    with pytest.raises(TrainingError, match="no training config"):
        TrainingConfig.from_run(tmp_path / "missing")
    if pooled_cache is not None:
        # A cache pooled for another architecture is refused, naming both poolings.
        with pytest.raises(TrainingError, match="pools 4×4, the table3 architecture 2×2"):
            train(dataclasses.replace(config, output=str(tmp_path / "t3"),
                                      architecture="table3"), verbose=0)
