"""The shared backbone (hagg_tf.training.multitask) and its export as the five networks."""
import json
import pathlib

import numpy as np
import pytest

from hagg_tf.tensorflow_import import import_tensorflow_quietly

tf = import_tensorflow_quietly()
import keras  # noqa: E402

from hagg_tf import networks  # noqa: E402
from hagg_tf.networks.architecture import get_head  # noqa: E402
from hagg_tf.data.network_specs import (INVERSE_INPUT_KEY, MULTI_IMAGE_NETWORKS,  # noqa: E402
                                        NETWORK_NAMES, SINGLE_IMAGE_NETWORKS,
                                        inverse_intensity_networks)
from hagg_tf.data.pooled import load_pooled_split  # noqa: E402
from hagg_tf.estimation.estimators import cyclic_subsets  # noqa: E402
from hagg_tf.training import TrainingError  # noqa: E402
from hagg_tf.training import multitask  # noqa: E402
from hagg_tf.training.multitask import (DEFAULT_BACKBONE_ARCHITECTURE as ARCHITECTURE,  # noqa: E402
                                        BackboneConfig, backbone_parts,
                                        calibrate_backbone, load_backbone, networks_from_backbone,
                                        per_image_targets, read_backbone_history,
                                        train_backbone)

NU = 3


def _config(cache, output, **overrides):
    settings = dict(architecture=ARCHITECTURE, image_size=networks.minimum_image_size(ARCHITECTURE),
                    epochs=2, batch_size=4, steps_per_epoch=2, num_images=NU, stack_epochs=2,
                    sample_head_epochs=2)
    settings.update(overrides)
    return BackboneConfig(str(cache), str(output), **settings)


@pytest.fixture(scope="module")
def trained(tiny_fine_cache, tmp_path_factory):
    """A finished two-epoch run with its ν-image heads and sample heads (the whole recipe,
    which passes f over the train and validation images once for both kinds of heads)."""
    _, cache = tiny_fine_cache
    config = _config(cache, tmp_path_factory.mktemp("backbone") / "run")
    passes, original = [], multitask._split_features
    multitask._split_features = lambda *args: passes.append(args) or original(*args)
    try:
        summary = multitask.train_shared_networks(config, verbose=0)
    finally:
        multitask._split_features = original
    assert len(passes) == 1
    return config, summary


def test_targets_are_the_image_labels_and_the_theta_columns(tiny_fine_cache):
    _, cache = tiny_fine_cache
    split = load_pooled_split(cache, "train")
    targets = per_image_targets(split.labels)
    assert list(targets) == list(NETWORK_NAMES)
    np.testing.assert_array_equal(targets["fractal_dimension"],
                                  split.labels["fractal_dimension"].astype(np.float32))
    np.testing.assert_array_equal(targets["mixing_ratio_classifier"],
                                  split.labels["homogeneous"].astype(np.float32))
    np.testing.assert_array_equal(targets["tio2_cluster_size"],
                                  split.labels["theta"][:, 3].astype(np.float32))


def test_run_completes_and_a_rerun_does_nothing(trained):
    config, summary = trained
    assert summary["status"] == "complete" and summary["epochs_done"] == 2
    assert [row["epoch"] for row in read_backbone_history(config.output)] == [0, 1]
    again = train_backbone(config, verbose=0)
    assert again == json.loads((__import__("pathlib").Path(config.output)
                                / "training.json").read_text())
    assert len(read_backbone_history(config.output)) == 2
    with pytest.raises(TrainingError, match="another run"):
        train_backbone(_config(config.pooled_cache, config.output, epochs=3), verbose=0)


def test_a_run_out_of_budget_resumes_where_it_stopped(tiny_fine_cache, tmp_path):
    _, cache = tiny_fine_cache
    config = _config(cache, tmp_path / "run", max_wall_seconds=0.0)
    first = train_backbone(config, verbose=0)
    assert first["status"] == "budget" and first["epochs_done"] == 1
    second = train_backbone(config, verbose=0)
    assert second["epochs_done"] == 2
    assert [row["epoch"] for row in read_backbone_history(config.output)] == [0, 1]


def test_a_second_stage_starts_from_the_calibrated_weights_of_the_first(trained, tmp_path):
    config, _ = trained
    second = _config(config.pooled_cache, tmp_path / "second", epochs=1, steps_per_epoch=1,
                     learning_rate=1e-12, initial_weights=config.output, sample_head_epochs=0)
    assert multitask.train_shared_networks(second, verbose=0)["status"] == "complete"
    # An intermediate stage without sample heads: its export keeps the plain means.
    assert (tmp_path / "second" / multitask.STACK_HEADS).is_file()
    assert multitask.load_sample_heads(second.output) is None
    start_f, start_heads = backbone_parts(load_backbone(config.output))
    after_f, after_heads = backbone_parts(load_backbone(second.output, "last"))
    fresh, _ = multitask.build_backbone_model(ARCHITECTURE, config.image_size, keras)
    fresh_f, _ = backbone_parts(fresh)
    # A step at a learning rate of 1e-12 leaves the trainable weights where they started.
    for start, after, new in zip(start_f.trainable_weights, after_f.trainable_weights,
                                 fresh_f.trainable_weights):
        np.testing.assert_allclose(np.asarray(after), np.asarray(start), rtol=0, atol=1e-6)
    assert not all(np.allclose(np.asarray(start), np.asarray(new), rtol=0, atol=1e-4)
                   for start, new in zip(start_f.trainable_weights, fresh_f.trainable_weights))
    for name in NETWORK_NAMES:
        for start, after in zip(start_heads[name].weights, after_heads[name].weights):
            np.testing.assert_allclose(np.asarray(after), np.asarray(start), rtol=0, atol=1e-6)
    recorded = json.loads((tmp_path / "second" / "training.json").read_text())
    assert recorded["config"]["initial_weights"] == config.output
    # The training log tells both stages, oldest first.
    from hagg_tf.export.from_training import backbone_training_log_markdown

    assert multitask.backbone_stages(second.output) == [pathlib.Path(config.output),
                                                        pathlib.Path(second.output)]
    log = backbone_training_log_markdown(second.output)
    assert log.index("## Stage 1 of 2: `" + config.output) < log.index("## Stage 2 of 2")
    assert log.count("| epoch |") == 2 and "over 1 epochs" in log.split("## Stage 2")[1]
    assert "## Stage" not in backbone_training_log_markdown(config.output)
    # The model card counts the epochs of both stages.
    from hagg_tf.export.from_training import backbone_training_record

    record = backbone_training_record(second.output)["shared_backbone"]
    assert record["final_epoch"] == 3 and record["epochs_per_stage"] == [2, 1]
    assert record["stages"] == 2 and record["images_seen"] == 3 * recorded["train_records"]


def test_a_second_stage_needs_a_finished_first_run(tiny_fine_cache, tmp_path):
    _, cache = tiny_fine_cache
    (tmp_path / "unfinished").mkdir()
    with pytest.raises(TrainingError, match="no finished backbone run"):
        train_backbone(_config(cache, tmp_path / "run", initial_weights=tmp_path / "unfinished"),
                       verbose=0)


def test_a_run_written_before_initial_weights_existed_still_resumes(trained, tmp_path):
    config, _ = trained
    copy = BackboneConfig(**{**config.__dict__, "output": str(tmp_path / "run")})
    __import__("shutil").copytree(config.output, copy.output)
    path = tmp_path / "run" / "training.json"
    summary = json.loads(path.read_text())
    summary["config"]["output"] = copy.output
    del summary["config"]["initial_weights"]
    path.write_text(json.dumps(summary))
    assert train_backbone(copy, verbose=0)["status"] == "complete"


def test_the_five_networks_are_the_backbone_and_its_heads(trained, tiny_fine_cache):
    config, _ = trained
    models = networks_from_backbone(config.output, config.image_size, NU, ARCHITECTURE)
    model = load_backbone(config.output)
    feature_extractor, heads = backbone_parts(model)
    size = config.image_size
    rng = np.random.default_rng(0)
    images = (rng.integers(0, 256, (NU, size, size, 1)) / 255 - 0.5).astype(np.float32)
    pooled = images.reshape(NU, size // 2, 2, size // 2, 2, 1).mean(axis=(2, 4))
    backbone_outputs = model(pooled, training=False)
    for name in SINGLE_IMAGE_NETWORKS:
        np.testing.assert_allclose(np.asarray(models[name](images, training=False)),
                                   np.asarray(backbone_outputs[name]), atol=2e-5)
    features = np.asarray(feature_extractor(pooled, training=False)).reshape(1, -1)
    with np.load(f"{config.output}/stack_heads.npz") as stored:
        head = get_head(models["tio2_cluster_size"])
        np.testing.assert_array_equal(head.get_weights()[0], stored["tio2_cluster_size/0"])
    np.testing.assert_allclose(np.asarray(models["wo3_cluster_size"](images[np.newaxis],
                                                                     training=False)),
                               np.asarray(get_head(models["wo3_cluster_size"])(
                                   features)), atol=2e-5)


def test_export_records_that_no_network_takes_the_inverse_images(trained, tmp_path):
    from hagg_tf.export.characterize import feature_passes
    from hagg_tf.export.from_training import export_from_backbone

    config, _ = trained
    written = export_from_backbone(config.output, tmp_path, kernel_dtype="float32")
    metadata = json.loads((written["composite"] / "hagg_tf_export.json").read_text())
    assert inverse_intensity_networks(metadata) == frozenset()
    assert all(metadata["networks"][name][INVERSE_INPUT_KEY] is False for name in NETWORK_NAMES)
    assert metadata["preprocessing"]["inverse_intensity_networks"] == []
    assert metadata["feature_source"] == {name: NETWORK_NAMES[0] for name in NETWORK_NAMES}
    assert feature_passes(metadata) == 1
    assert feature_passes({}) == len(NETWORK_NAMES)
    assert "shared_backbone" in metadata["model_card"]["training"]
    assert "| epoch |" in (written["composite"] / "TRAINING.md").read_text()
    # CNN^1 of the graph sees the plain images: the inverted input changes nothing.
    loaded = tf.saved_model.load(str(written["composite"]))
    # f's weights are stored once, under the first network; every network still lists them.
    first = loaded.networks[NETWORK_NAMES[0]].weights
    for name in NETWORK_NAMES[1:]:
        own = loaded.networks[name].weights
        assert own["f_conv_1/kernel"] is first["f_conv_1/kernel"]
        assert own["g_dense_1/kernel"] is not first["g_dense_1/kernel"]
    rng = np.random.default_rng(1)
    size = config.image_size
    images = (rng.integers(0, 256, (1, NU, size, size)) / 255 - 0.5).astype(np.float32)
    outputs = [loaded.signatures["serving_preprocessed"](
        images=tf.constant(images), inverted_images=tf.constant(inverted))
        for inverted in (images, rng.uniform(-0.5, 0.5, images.shape).astype(np.float32))]
    for key in ("tio2_cluster_size_raw", "wo3_cluster_size_raw", "fractal_dimension"):
        np.testing.assert_array_equal(outputs[0][key].numpy(), outputs[1][key].numpy())
    models = networks_from_backbone(config.output, size, NU, ARCHITECTURE)
    # θ̂_1's raw value: the network averaged over the ν rotations of the sample's stack.
    rotations = images[0][cyclic_subsets(NU, NU)][..., np.newaxis]
    expected = np.asarray(models["tio2_cluster_size"](rotations, training=False))[:, 0].mean()
    np.testing.assert_allclose(outputs[0]["tio2_cluster_size_raw"].numpy(), [expected],
                               atol=2e-5)


def test_the_sample_heads_are_fitted_exported_and_used_by_every_runtime(trained, tmp_path):
    from hagg_tf.data.sample_heads import SAMPLE_HEADS_FILE
    from hagg_tf.estimation.model import CharacterizeModel, export_sample_heads
    from hagg_tf.estimation.uncertainty import estimate_with_uncertainty
    from hagg_tf.export.from_training import export_from_backbone, export_from_composite

    config, _ = trained
    summary = json.loads((pathlib.Path(config.output) / "training.json").read_text())
    assert set(summary["sample_heads"]["validation_mae"]) == {"fractal_dimension",
                                                                "mixing_ratio"}
    heads = multitask.load_sample_heads(config.output)
    written = export_from_backbone(config.output, tmp_path, kernel_dtype="float32")
    version_dir = written["composite"]
    metadata = json.loads((version_dir / "hagg_tf_export.json").read_text())
    assert metadata["estimators"]["sample_heads"]["file"] == SAMPLE_HEADS_FILE
    assert metadata["model_card"]["training"]["shared_backbone"]["sample_heads"] == \
        summary["sample_heads"]
    assert "sample heads of θ̂_Df and θ̂_ρ" in (version_dir / "TRAINING.md").read_text()
    exported = export_sample_heads(version_dir, metadata)
    for (kernel, bias), (kernel_0, bias_0) in zip(exported.layers["mixing_ratio"],
                                                  heads.layers["mixing_ratio"]):
        np.testing.assert_array_equal(kernel, kernel_0)
        np.testing.assert_array_equal(bias, bias_0)
    model = CharacterizeModel(version_dir)
    rng = np.random.default_rng(3)
    size = config.image_size
    counts = rng.poisson(40, (NU + 2, size, size)).astype(np.float32)
    electrons = np.full(NU + 2, 100.0, np.float32)
    graph = model.estimate(counts, electrons)                   # serving_default
    numpy_path, _ = estimate_with_uncertainty(model, counts, electrons, resamples=0)
    expected = heads(graph.fractal_dimension_per_image, graph.mixing_ratio_regressor_per_image,
                     graph.homogeneous_probability_per_image)
    for estimate in (graph, numpy_path):
        assert estimate.fractal_dimension == pytest.approx(
            float(expected["fractal_dimension"]), abs=1e-5)
        assert estimate.mixing_ratio == pytest.approx(float(expected["mixing_ratio"]), abs=1e-5)
        assert estimate.fractal_dimension_images_mean == pytest.approx(
            float(graph.fractal_dimension_per_image.mean()), abs=1e-5)

    # A composite export refitted on the same pooled cache gets the same heads: the rebuilt
    # networks carry the calibrated backbone's f and heads exactly.
    refitted = export_from_composite(version_dir, tmp_path / "refit", version=2,
                                     per_network=False, composite=True, kernel_dtype="float32",
                                     sample_heads_cache=config.pooled_cache,
                                     sample_head_epochs=config.sample_head_epochs,
                                     seed=config.seed)["composite"]
    refit_metadata = json.loads((refitted / "hagg_tf_export.json").read_text())
    record = refit_metadata["model_card"]["training"]["shared_backbone"]["sample_heads"]
    assert record["validation_mae"] == pytest.approx(summary["sample_heads"]["validation_mae"],
                                                     abs=1e-6)
    assert "pooled cache" in record["how"]
    log = (refitted / "TRAINING.md").read_text()
    assert log.startswith((version_dir / "TRAINING.md").read_text().rstrip("\n"))
    assert log.rstrip("\n").splitlines()[-1].startswith("- sample heads of θ̂_Df and θ̂_ρ")
    for target in heads.layers:
        for (kernel, bias), (kernel_0, bias_0) in zip(
                export_sample_heads(refitted, refit_metadata).layers[target],
                heads.layers[target]):
            np.testing.assert_allclose(kernel, kernel_0, atol=1e-6)
            np.testing.assert_allclose(bias, bias_0, atol=1e-6)
    with pytest.raises(ValueError, match="pooled cache of the train and validation split"):
        export_from_composite(version_dir, tmp_path / "none", composite=True,
                              per_network=False, sample_heads_cache=tmp_path / "no_cache")

    (version_dir / SAMPLE_HEADS_FILE).unlink()
    with pytest.raises(ValueError, match="sample heads stored there"):
        export_sample_heads(version_dir, metadata)


def test_the_stack_heads_refitted_from_an_export_are_the_runs_own(trained, tmp_path):
    # hagg-export-models --from_composite --stack_heads_cache fits the ν-image heads again on
    # the export's f: with the run's seed and epochs it gets the run's heads, and records them.
    from hagg_tf.export.from_training import (export_from_backbone, export_from_composite,
                                              networks_from_composite)

    config, _ = trained
    summary = json.loads((pathlib.Path(config.output) / "training.json").read_text())
    assert summary["stack_heads"]["how"] == multitask.STACK_HEADS_HOW
    version_dir = export_from_backbone(config.output, tmp_path / "run",
                                       kernel_dtype="float32")["composite"]
    refitted = export_from_composite(version_dir, tmp_path / "refit", version=2,
                                     per_network=False, composite=True, kernel_dtype="float32",
                                     stack_heads_cache=config.pooled_cache,
                                     stack_head_epochs=config.stack_epochs,
                                     seed=config.seed)["composite"]
    metadata = json.loads((refitted / "hagg_tf_export.json").read_text())
    record = metadata["model_card"]["training"]["shared_backbone"]["stack_heads"]
    assert set(record["validation_mae"]) == set(MULTI_IMAGE_NETWORKS)
    for name, value in summary["stack_heads"]["validation_mae"].items():
        assert record["validation_mae"][name] == (None if value is None
                                                  else pytest.approx(value, abs=1e-6))
    assert "pooled cache" in record["how"] and record["epochs"] == config.stack_epochs
    log = (refitted / "TRAINING.md").read_text()
    assert log.startswith((version_dir / "TRAINING.md").read_text().rstrip("\n"))
    assert log.rstrip("\n").splitlines()[-1].startswith("- ν-image heads of CNN^0 and CNN^1")
    models, _ = networks_from_composite(refitted)
    with np.load(pathlib.Path(config.output) / multitask.STACK_HEADS) as stored:
        for name in MULTI_IMAGE_NETWORKS:
            for index, weight in enumerate(get_head(models[name]).get_weights()):
                np.testing.assert_allclose(weight, stored[f"{name}/{index}"], atol=1e-6)
    with pytest.raises(ValueError, match="pooled cache of the train and validation split"):
        export_from_composite(version_dir, tmp_path / "none", composite=True,
                              per_network=False, stack_heads_cache=tmp_path / "no_cache")


def test_a_backbone_is_rebuilt_only_from_networks_that_share_one_f(trained):
    config, _ = trained
    models = networks_from_backbone(config.output, image_size=config.image_size,
                                    num_images=NU, architecture=config.architecture)
    rebuilt = multitask.backbone_from_networks(models, config.architecture, config.image_size)
    feature_extractor, heads = backbone_parts(rebuilt)
    original_f, original_heads = backbone_parts(load_backbone(config.output))
    for left, right in zip(feature_extractor.get_weights(), original_f.get_weights()):
        np.testing.assert_array_equal(left, right)
    for name in SINGLE_IMAGE_NETWORKS:
        for left, right in zip(heads[name].get_weights(), original_heads[name].get_weights()):
            np.testing.assert_array_equal(left, right)
    f_of_one = networks.get_feature_extractor(models[SINGLE_IMAGE_NETWORKS[-1]])
    f_of_one.set_weights([weight + 1.0 for weight in f_of_one.get_weights()])
    with pytest.raises(ValueError, match="do not share one feature extractor"):
        multitask.backbone_from_networks(models, config.architecture, config.image_size)


def test_the_paper_networks_keep_the_inverse_images():
    assert inverse_intensity_networks() == frozenset({"tio2_cluster_size"})
    assert inverse_intensity_networks({"networks": {"tio2_cluster_size": {}}}) == \
        frozenset({"tio2_cluster_size"})


def test_calibration_sets_the_moving_statistics_to_the_batch_statistics(trained, tmp_path,
                                                                         monkeypatch):
    config, _ = trained
    copy = BackboneConfig(**{**config.__dict__, "output": str(tmp_path / "run")})
    __import__("shutil").copytree(config.output, copy.output)
    monkeypatch.setattr(multitask, "CALIBRATION_BATCHES", 1)
    report = calibrate_backbone(copy)
    assert report["batches"] == 1 and set(report["after"]) == set(report["before"])
    feature_extractor, _ = backbone_parts(load_backbone(copy.output))
    last_f, _ = backbone_parts(load_backbone(copy.output, "last"))
    # One batch at momentum 0: the first batch norm's moving mean is that batch's mean of the
    # first convolution's output (the convolution's weights are unchanged).
    split = load_pooled_split(copy.pooled_cache, "train")
    batches = multitask._batches(keras, split, copy, training=True)
    batches.set_epoch(copy.epochs)
    conv = keras.Model(last_f.inputs, last_f.get_layer("f_conv_1").output)
    expected = np.asarray(conv(batches[0][0])).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(
        np.asarray(feature_extractor.get_layer("f_batch_norm_1").moving_mean), expected,
        rtol=0, atol=3e-4)  # float32 reductions in another order
    assert not np.allclose(np.asarray(last_f.get_layer("f_batch_norm_1").moving_mean), expected,
                           rtol=0, atol=3e-3)


def test_the_composite_runs_the_shared_f_once_per_image(trained):
    from hagg_tf.export.characterize import (CharacterizeModule, _network_settings,
                                             network_weights)

    config, _ = trained
    models = networks_from_backbone(config.output, config.image_size, NU, ARCHITECTURE)
    weights = {name: network_weights(models[name]) for name in NETWORK_NAMES}
    shared = CharacterizeModule(weights, {name: _network_settings(models[name], False)
                                          for name in NETWORK_NAMES},
                                config.image_size, NU, "float32")
    assert set(shared.feature_source.values()) == {NETWORK_NAMES[0]}
    # The paper's input for CNN^1 (1/p images) needs its own pass, even with the same weights.
    paper_input = CharacterizeModule(weights, {name: _network_settings(models[name])
                                               for name in NETWORK_NAMES},
                                     config.image_size, NU, "float32")
    assert paper_input.feature_source["tio2_cluster_size"] == "tio2_cluster_size"
    assert paper_input.feature_source["wo3_cluster_size"] == NETWORK_NAMES[0]
    weights["wo3_cluster_size"]["f_conv_1/bias"] = weights["wo3_cluster_size"][
        "f_conv_1/bias"] + 1e-3
    changed = CharacterizeModule(weights, {name: _network_settings(models[name], False)
                                           for name in NETWORK_NAMES},
                                 config.image_size, NU, "float32")
    assert changed.feature_source["wo3_cluster_size"] == "wo3_cluster_size"
    assert changed.feature_source["tio2_cluster_size"] == NETWORK_NAMES[0]


def test_a_stage_starts_from_a_composite_export(trained, tmp_path):
    """The run that made an export may be gone (the shipped models): the export is rebuilt into
    a run directory, the next stage starts from it, and its log and card count the export's
    stages."""
    from hagg_tf.export.from_training import (REBUILT_START, backbone_run_from_composite,
                                              backbone_training_log_markdown,
                                              backbone_training_record, export_from_backbone,
                                              train_shared_networks_from)

    config, summary = trained
    version_dir = export_from_backbone(config.output, tmp_path / "export",
                                       kernel_dtype="float32")["composite"]
    second = _config(config.pooled_cache, tmp_path / "second", epochs=1, steps_per_epoch=1,
                     learning_rate=1e-12, sample_head_epochs=0,
                     initial_weights=str(tmp_path / "second" / REBUILT_START))
    assert train_shared_networks_from(second, source_export=version_dir,
                                      verbose=0)["status"] == "complete"
    rebuilt = pathlib.Path(second.initial_weights)
    record = json.loads((rebuilt / "training.json").read_text())
    assert record["status"] == multitask.REBUILT_STATUS
    # f and the single-image heads are the exported ones, bit for bit.
    start_f, start_heads = backbone_parts(load_backbone(config.output))
    rebuilt_model = load_backbone(rebuilt)
    rebuilt_f, rebuilt_heads = backbone_parts(rebuilt_model)
    for left, right in zip(rebuilt_f.get_weights(), start_f.get_weights()):
        np.testing.assert_array_equal(left, right)
    for name in SINGLE_IMAGE_NETWORKS:
        for left, right in zip(rebuilt_heads[name].get_weights(),
                               start_heads[name].get_weights()):
            np.testing.assert_array_equal(left, right)
    # The auxiliary heads saved are the fitted ones: their recorded MAE is theirs.
    split = load_pooled_split(config.pooled_cache, "validation")
    features = multitask.pooled_features(rebuilt_f, split)
    targets = per_image_targets(split.labels)
    for name, mae in record["auxiliary_heads"]["validation_mae_per_image"].items():
        predicted = np.asarray(rebuilt_heads[name](features, training=False))[:, 0]
        assert float(np.mean(np.abs(predicted - targets[name]))) == pytest.approx(mae, abs=1e-4)
    # A rerun keeps the rebuilt directory; another export may not reuse it.
    written = (rebuilt / multitask.CALIBRATED_MODEL).stat().st_mtime_ns
    assert backbone_run_from_composite(version_dir, rebuilt, config.pooled_cache) == rebuilt
    assert (rebuilt / multitask.CALIBRATED_MODEL).stat().st_mtime_ns == written
    # (the export base names the same version directory; a copy elsewhere is another export)
    assert backbone_run_from_composite(tmp_path / "export", rebuilt,
                                       config.pooled_cache) == rebuilt
    other = tmp_path / "other" / "characterize" / "1"
    __import__("shutil").copytree(version_dir, other)
    with pytest.raises(ValueError, match="holds another run"):
        backbone_run_from_composite(other, rebuilt, config.pooled_cache)
    # The log carries the export's own log under the rebuilt stage, and the card counts it.
    log = backbone_training_log_markdown(second.output)
    assert log.index(f"## Stage 1 of 2: `{rebuilt}`") < log.index("## Stage 2 of 2")
    assert "Rebuilt from the export" in log and log.count("| epoch |") == 2
    card = backbone_training_record(second.output)["shared_backbone"]
    assert card["epochs_per_stage"] == [2, 1] and card["final_epoch"] == 3
    assert card["stages"] == 2
    assert card["images_seen"] == summary["train_records"] * 3
