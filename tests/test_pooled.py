"""The compact architecture, the pooled cache, training from it and predicting a split."""
import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from hagg_tf import networks  # noqa: E402
from hagg_tf.data import DatasetError  # noqa: E402
from hagg_tf.data.manifest import load_manifest, shard_paths  # noqa: E402
from hagg_tf.data.pooled import (SQUARE_SYMMETRIES, build_pooled_cache,  # noqa: E402
                                 iter_pooled_shards, load_pooled_split, square_symmetry,
                                 sums_to_inputs)
from hagg_tf.data.records import read_samples  # noqa: E402
from hagg_tf.estimation.estimators import cyclic_subsets  # noqa: E402
from hagg_tf.evaluation.predict import predict_split  # noqa: E402
from hagg_tf.training import SUMMARY, read_history  # noqa: E402
from hagg_tf.training.pooled import (epoch_plan, make_batches, pooled_twin,  # noqa: E402
                                     random_symmetry, recalibrate_batch_norm,
                                     train_pooled_network)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    "ignore:Your `PyDataset` class should call:UserWarning")

SIZE = networks.minimum_image_size("compact")  # 128 px
POOLING = networks.get_architecture("compact").input_pooling


@pytest.fixture(scope="module")
def tiny_db(tiny_database):
    return tiny_database(SIZE)


@pytest.fixture(scope="module")
def cache(tiny_db, tmp_path_factory):
    return build_pooled_cache(tiny_db, tmp_path_factory.mktemp("cache") / "pool4", POOLING,
                              workers=1, progress=False)


def _average_pool(images, pooling):
    n, height, width = images.shape
    return images.reshape(n, height // pooling, pooling, width // pooling, pooling).mean((2, 4))


def test_compact_architecture_is_smaller_and_matches_its_plan():
    assert SIZE == 128
    assert networks.feature_map_sizes(512, "compact") == [128, 128, 64, 64, 32, 32, 32, 16, 16,
                                                          8, 8, 4]
    compact = networks.build_network("fractal_dimension", 512, architecture="compact")
    table3 = networks.build_network("fractal_dimension", 512)
    assert networks.architecture_of(compact).name == "compact"
    assert networks.architecture_of(table3).name == "table3"
    assert compact.count_params() < table3.count_params() / 10
    assert compact.get_layer("f").output_shape[-1] == networks.FEATURE_DIM
    with pytest.raises(ValueError, match="smallest usable size is 128"):
        networks.build_network("fractal_dimension", 124, architecture="compact")
    with pytest.raises(ValueError, match="unknown architecture"):
        networks.build_network("fractal_dimension", 512, architecture="tiny")


def test_cache_is_the_exact_pooled_preprocessing_with_the_labels(tiny_db, cache):
    manifest = load_manifest(tiny_db)
    for split in ("train", "evaluation"):
        pooled = load_pooled_split(cache, split, tiny_db)
        samples = [sample for path in shard_paths(manifest, split)
                   for sample in read_samples(path)]
        assert len(pooled) == len(samples) == manifest["splits"][split]["records"]
        counts = np.stack([sample.counts for sample in samples])
        electrons = np.array([sample.electrons_per_pixel for sample in samples], np.float32)
        for inverted in (False, True):
            reference = networks.preprocess_images_numpy(
                counts, electrons, inversion_threshold=1e-3 if inverted else None)
            np.testing.assert_allclose(pooled.inputs(np.arange(len(pooled)), inverted)[..., 0],
                                       _average_pool(reference, POOLING), atol=1e-6)
        assert list(pooled.labels["record_index"]) == [sample.index for sample in samples]
        np.testing.assert_array_equal(pooled.labels["mixing_ratio"],
                                      [sample.descriptors.mixing_ratio for sample in samples])
        np.testing.assert_array_equal(pooled.labels["num_particles"],
                                      [len(sample.aggregate.radii) for sample in samples])
        np.testing.assert_array_equal(pooled.labels["theta"][:, 2],
                                      [sample.theta.wo3_cluster_size for sample in samples])


def test_cache_resumes_and_refuses_another_pooling(tiny_db, cache, tmp_path):
    part = sorted(cache.glob("evaluation-*.npz"))[0]
    before = part.read_bytes()
    part.unlink()
    with pytest.raises(DatasetError, match="parts of split"):
        load_pooled_split(cache, "evaluation", tiny_db)
    build_pooled_cache(tiny_db, cache, POOLING, workers=1, progress=False)
    assert part.read_bytes() == before
    with pytest.raises(DatasetError, match="another database or pooling"):
        build_pooled_cache(tiny_db, cache, 2, workers=1, progress=False)
    streamed = next(iter_pooled_shards(tiny_db, "evaluation", POOLING))
    with np.load(part) as stored:
        np.testing.assert_array_equal(streamed["plain"], stored["plain"])


@pytest.mark.parametrize("name", ["fractal_dimension", "tio2_cluster_size"])
def test_pooled_twin_computes_the_full_network(name, cache):
    model = networks.build_network(name, SIZE, num_images=3, architecture="compact")
    twin = pooled_twin(model, keras)
    assert len(twin.trainable_weights) == len(model.trainable_weights)
    pooled = load_pooled_split(cache, "train")
    inverted = networks.network_spec(name).invert_intensities
    inputs = pooled.inputs(np.arange(3), inverted)
    # The full network sees 512-px-like inputs: unpool by repetition (average pooling undoes it).
    full = np.repeat(np.repeat(inputs, POOLING, axis=1), POOLING, axis=2)
    if networks.network_spec(name).multi_image:
        inputs, full = inputs[None], full[None]
    np.testing.assert_allclose(np.asarray(twin(inputs)), np.asarray(model(full)), atol=1e-5)


def test_epoch_plans_balance_group_and_repeat(cache):
    train = load_pooled_split(cache, "train")
    homogeneous = train.labels["homogeneous"]
    assert 0 < homogeneous.sum() < len(homogeneous)
    plan = np.concatenate(epoch_plan(train, "mixing_ratio_classifier", 2, 5, 0, True))
    counts = np.bincount(homogeneous[plan].astype(int), minlength=2)
    assert abs(counts[0] - counts[1]) <= 2  # balanced up to the dropped partial batch
    groups = np.concatenate(epoch_plan(train, "wo3_cluster_size", 2, 5, 0, True, num_images=3))
    assert groups.shape[1] == 3
    ids = train.labels["theta_id"][groups]
    assert np.all(ids == ids[:, :1])
    assert len(np.unique(groups)) == groups.size  # no image twice in an epoch
    again = epoch_plan(train, "wo3_cluster_size", 2, 5, 0, True, num_images=3)
    np.testing.assert_array_equal(np.concatenate(again), groups)
    other = np.concatenate(epoch_plan(train, "wo3_cluster_size", 2, 5, 1, True, num_images=3))
    assert not np.array_equal(other, groups)


def test_batch_norm_recalibration_sets_the_batch_statistics(cache):
    model = networks.build_network("fractal_dimension", SIZE, architecture="compact")
    twin = pooled_twin(model, keras)
    batches = make_batches(keras, load_pooled_split(cache, "train"), "fractal_dimension", 8,
                           seed=0, training=False)
    inputs = batches[0][0]
    # Freshly built: moving statistics are 0 / 1, so inference differs from batch statistics.
    assert not np.allclose(np.asarray(twin(inputs, training=False)),
                           np.asarray(twin(inputs, training=True)), atol=1e-4)
    assert recalibrate_batch_norm(model, twin, batches, max_batches=1) == 1
    np.testing.assert_allclose(np.asarray(twin(inputs, training=False)),
                               np.asarray(twin(inputs, training=True)), atol=1e-3)
    momenta = {layer.momentum for layer in networks.get_feature_extractor(model).layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.99}  # restored


def test_pooled_training_resumes_and_saves_the_full_network(tiny_db, cache, tmp_path):
    run = tmp_path / "df"
    first = train_pooled_network("fractal_dimension", cache, run, epochs=1, batch_size=4,
                                 learning_rate=1e-3, dataset_dir=tiny_db, calibration_batches=2,
                                 verbose=0)
    assert first.final_epoch == 1 and first.monitor == "val_loss"
    second = train_pooled_network("fractal_dimension", cache, run, epochs=2, batch_size=4,
                                  learning_rate=1e-3, dataset_dir=tiny_db,
                                  calibration_batches=2, verbose=0)
    assert second.initial_epoch == 1 and second.final_epoch == 2
    rows = read_history(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1]
    assert all(np.isfinite(row["val_loss"]) and "val_mae" in row for row in rows)
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["architecture"] == "compact" and summary["status"] == "complete"
    best = keras.saving.load_model(run / "best.keras", compile=False)
    assert best.input_shape == (None, SIZE, SIZE, 1)
    assert networks.architecture_of(best).name == "compact"
    # Multi-image: the tiny validation split has no ν-group; the training loss decides.
    # f starts from another run's (transfer); a vanishing learning rate keeps it there.
    multi = train_pooled_network("wo3_cluster_size", cache, tmp_path / "w", epochs=1,
                                 batch_size=1, num_images=3, dataset_dir=tiny_db,
                                 calibration_batches=1, init_from=run, learning_rate=1e-12,
                                 verbose=0)
    assert multi.monitor == "loss"
    trained = keras.saving.load_model(tmp_path / "w" / "last.keras", compile=False)
    np.testing.assert_allclose(
        networks.get_feature_extractor(trained).get_layer("f_conv_3").get_weights()[0],
        networks.get_feature_extractor(best).get_layer("f_conv_3").get_weights()[0], atol=1e-6)
    assert json.loads((tmp_path / "w" / SUMMARY).read_text())["init_from"] == str(run)


@pytest.fixture(scope="module")
def predicted(tiny_db, cache):
    """Untrained compact networks and their predict_split of the evaluation split (ν = 2, 3)
    from the full cache, with reversed baselines."""
    models = {name: networks.build_network(name, SIZE, num_images=3, architecture="compact")
              for name in networks.NETWORK_SPECS}
    evaluation = load_pooled_split(cache, "evaluation")
    baselines = {"record_index": evaluation.labels["record_index"][::-1],
                 "baseline_mixing_ratio_threshold": evaluation.labels["mixing_ratio"][::-1]}
    return models, predict_split(tiny_db, model=models, nus=(2, 3), cache_dir=cache,
                                 baselines=baselines, progress=False)


def test_predict_split_aligns_outputs_groups_and_baselines(tiny_db, cache, predicted):
    models, predictions = predicted
    evaluation = load_pooled_split(cache, "evaluation")
    arrays = predictions.arrays
    assert predictions.group_sizes == [2, 3] and predictions.info["trained_nu"] == 3
    np.testing.assert_array_equal(arrays["baseline_mixing_ratio_threshold"],
                                  arrays["mixing_ratio"])
    twin = pooled_twin(models["fractal_dimension"], keras)
    np.testing.assert_allclose(arrays["fractal_dimension_pred"],
                               np.asarray(twin(evaluation.inputs(np.arange(len(evaluation)))))
                               [:, 0], atol=1e-5)
    # The trained ν uses the network itself on the group's images, averaged over the group's
    # ν rotations as the estimator averages a sample of ν images.
    group = arrays["groups_nu3"][0]
    rotations = group[cyclic_subsets(3, 3)]
    stacks = sums_to_inputs(evaluation.inverted[rotations], POOLING)[..., None]
    expected = np.asarray(pooled_twin(models["tio2_cluster_size"], keras)(stacks))[:, 0]
    np.testing.assert_allclose(arrays["tio2_cluster_size_pred_nu3"][0], expected.mean(),
                               atol=1e-4)
    assert np.ptp(expected) > 1e-6  # the rotations differ: the average is not one of them
    assert "tio2_cluster_size_nu2" in predictions.info["group_heads"]
    # Without the cache the images are decoded shard by shard: the same numbers.
    streamed = predict_split(tiny_db, model=models, nus=(3,), progress=False)
    np.testing.assert_allclose(streamed.arrays["fractal_dimension_pred"],
                               arrays["fractal_dimension_pred"], atol=1e-6)


def test_predict_split_decodes_the_splits_a_partial_cache_lacks(tiny_db, predicted, tmp_path):
    # A cache of the evaluation split alone (what evaluating needs) and a ν other than the
    # trained one, whose head is refitted on the train split's features: the train and
    # validation splits are decoded from the TFRecords instead of failing after the whole
    # evaluation split has been predicted.
    models, from_full = predicted
    partial = build_pooled_cache(tiny_db, tmp_path / "evaluation_only", POOLING,
                                 splits=("evaluation",), workers=1, progress=False)
    assert not list(partial.glob("train-*.npz"))
    from_partial = predict_split(tiny_db, model=models, nus=(2, 3), cache_dir=partial,
                                 progress=False)
    for key in ("fractal_dimension_pred", "tio2_cluster_size_pred_nu2",
                "wo3_cluster_size_pred_nu2"):
        np.testing.assert_allclose(from_partial.arrays[key], from_full.arrays[key], atol=1e-5)


def test_compact_composite_export_matches_the_keras_networks(tmp_path):
    from hagg_tf.export.characterize import export_characterize_model
    from hagg_tf.export.from_training import networks_from_composite

    keras.utils.set_random_seed(3)
    models = {name: networks.build_network(name, SIZE, num_images=3, architecture="compact")
              for name in networks.NETWORK_SPECS}
    version_dir = export_characterize_model(models, tmp_path, 1, kernel_dtype="float32")
    assert json.loads((version_dir / "hagg_tf_export.json").read_text())["architecture"] == \
        "compact"
    rng = np.random.default_rng(0)
    images = rng.uniform(-0.5, 0.5, (1, 4, SIZE, SIZE)).astype(np.float32)
    inverted = rng.uniform(-0.5, 0.5, (1, 4, SIZE, SIZE)).astype(np.float32)
    loaded = tf.saved_model.load(str(version_dir))
    outputs = loaded.signatures["serving_preprocessed"](images=tf.constant(images),
                                                        inverted_images=tf.constant(inverted))
    expected = np.asarray(models["fractal_dimension"](images[0, ..., None]))[:, 0]
    np.testing.assert_allclose(outputs["fractal_dimension_per_image"].numpy()[0], expected,
                               atol=1e-5)
    stack = inverted[:, [0, 1, 2], ..., None]
    np.testing.assert_allclose(outputs["tio2_cluster_size_per_subset"].numpy()[0, 0],
                               np.asarray(models["tio2_cluster_size"](stack))[0, 0], atol=1e-4)
    rebuilt, metadata = networks_from_composite(version_dir)
    assert networks.architecture_of(rebuilt["wo3_cluster_size"]).name == "compact"
    np.testing.assert_allclose(np.asarray(rebuilt["fractal_dimension"](images[0, ..., None])),
                               expected[:, None], atol=1e-6)


def test_pooled_run_out_of_budget_is_not_stopped_early_and_resumes(tiny_db, cache, tmp_path):
    run = tmp_path / "df"
    settings = dict(batch_size=4, steps_per_epoch=2, learning_rate=1e-3, dataset_dir=tiny_db,
                    calibration_batches=1, reduce_lr_patience=None, verbose=0)
    # A zero budget ends the run after its first epoch: not early stopping, not complete.
    first = train_pooled_network("fractal_dimension", cache, run, epochs=3,
                                 max_wall_seconds=0.0, **settings)
    assert first.final_epoch == 1 and not first.stopped_early
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["status"] == "budget" and summary["stopped_early"] is False
    first_rows = read_history(run)
    assert [int(row["epoch"]) for row in first_rows] == [0]

    second = train_pooled_network("fractal_dimension", cache, run, epochs=3, **settings)
    assert second.initial_epoch == 1 and second.epochs_run == 2 and second.final_epoch == 3
    rows = read_history(run)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2] and rows[0] == first_rows[0]
    summary = json.loads((run / SUMMARY).read_text())
    assert summary["status"] == "complete" and summary["images_seen"] == 3 * 2 * 4


def test_pooled_run_ended_by_early_stopping_is_left_alone(tiny_db, cache, tmp_path):
    run = tmp_path / "df"
    settings = dict(batch_size=4, steps_per_epoch=1, dataset_dir=tiny_db,
                    calibration_batches=1, verbose=0)
    train_pooled_network("fractal_dimension", cache, run, epochs=1, **settings)
    # What early stopping at epoch 1 of 5 leaves behind (patience cannot force it here).
    path = run / SUMMARY
    path.write_text(json.dumps({**json.loads(path.read_text()), "epochs": 5,
                                "stopped_early": True}))
    history = (run / "history.csv").read_text()
    again = train_pooled_network("fractal_dimension", cache, run, epochs=5, **settings)
    assert again.already_complete and again.epochs_run == 0 and again.final_epoch == 1
    assert again.stopped_early
    assert (run / "history.csv").read_text() == history


def test_pooled_features_of_the_space_to_depth_stem_are_the_networks():
    # Training runs f from its pooled input on; with a space-to-depth stem the rearrangement
    # must come with it, after the pooling.
    from hagg_tf.training.pooled import pooled_feature_extractor

    size = networks.minimum_image_size("fine_s2d")
    pooling = networks.get_architecture("fine_s2d").input_pooling
    model = networks.build_network("fractal_dimension", size, architecture="fine_s2d")
    features_of = pooled_feature_extractor(model, keras)
    pooled = np.random.default_rng(2).uniform(-0.5, 0.5, (3, size // pooling, size // pooling, 1))
    full = np.repeat(np.repeat(pooled, pooling, axis=1), pooling, axis=2).astype(np.float32)
    np.testing.assert_allclose(np.asarray(features_of(pooled.astype(np.float32))),
                               np.asarray(networks.get_feature_extractor(model)(full)),
                               atol=1e-5)


def test_square_symmetry_gives_the_eight_elements_of_the_group():
    image = np.arange(9.0).reshape(1, 3, 3)
    expected = [np.rot90(image[0], k) for k in range(4)]
    expected += [np.rot90(image[0], k)[:, ::-1] for k in range(4)]
    got = [square_symmetry(image, k)[0] for k in range(SQUARE_SYMMETRIES)]
    for want, have in zip(expected, got):
        np.testing.assert_array_equal(have, want)
    assert len({have.tobytes() for have in got}) == SQUARE_SYMMETRIES
    with pytest.raises(ValueError, match="index must be in"):
        square_symmetry(image, SQUARE_SYMMETRIES)


def test_random_symmetry_draws_turns_then_reflections():
    # The draws of the shipped networks' recipes: one turn per image, then one reflection.
    images = np.random.default_rng(0).normal(size=(6, 4, 4, 1))
    draws = np.random.default_rng(5)
    turns, flips = draws.integers(0, 4, size=6), draws.integers(0, 2, size=6)
    expected = [np.rot90(image, turns[k], axes=(0, 1)) for k, image in enumerate(images)]
    expected = np.stack([image[:, ::-1] if flips[k] else image
                         for k, image in enumerate(expected)])
    np.testing.assert_array_equal(random_symmetry(images, np.random.default_rng(5)), expected)


def test_evaluation_averages_the_symmetries_as_the_export_does(tmp_path):
    from hagg_tf.data.pooled import pool_sums, preprocess_levels
    from hagg_tf.estimation.model import CharacterizeModel, PER_IMAGE_SIGNATURE
    from hagg_tf.evaluation.predict import _SplitRunner, load_networks
    from hagg_tf.export.characterize import export_characterize_model

    keras.utils.set_random_seed(4)
    models = {name: networks.build_network(name, SIZE, num_images=3, architecture="compact")
              for name in networks.NETWORK_SPECS}
    version_dir = export_characterize_model(models, tmp_path, 1, kernel_dtype="float32",
                                            test_time_symmetries=SQUARE_SYMMETRIES)
    rebuilt, description = load_networks(version_dir)
    assert description["test_time_symmetries"] == SQUARE_SYMMETRIES
    runner = _SplitRunner(rebuilt, description["inverse_intensity_networks"],
                          description["test_time_symmetries"], description["feature_source"])
    rng = np.random.default_rng(2)
    counts = rng.poisson(rng.uniform(0, 40, (2, SIZE, SIZE))).astype(np.float32)
    electrons = 100.0
    part = {kind: np.stack([pool_sums(preprocess_levels(image, electrons, invert), POOLING)
                            for image in counts])
            for kind, invert in (("plain", False), ("inverted", True))}
    evaluated = runner.run(part)
    served = CharacterizeModel(version_dir).saved_model.signatures[PER_IMAGE_SIGNATURE](
        images=tf.constant(counts[np.newaxis]),
        electrons_per_pixel=tf.fill([1, 2], np.float32(electrons)))
    np.testing.assert_allclose(evaluated["fractal_dimension_pred"],
                               served["fractal_dimension_per_image"].numpy()[0], atol=1e-4)
    np.testing.assert_allclose(evaluated["features/tio2_cluster_size"],
                               served["tio2_cluster_size_features"].numpy()[0], atol=1e-4)
    one_pass = _SplitRunner(rebuilt, description["inverse_intensity_networks"]).run(part)
    assert np.abs(one_pass["fractal_dimension_pred"]
                  - evaluated["fractal_dimension_pred"]).max() > 1e-5


def test_evaluation_runs_a_shared_f_once_with_the_same_numbers():
    from hagg_tf.evaluation.predict import _SplitRunner

    keras.utils.set_random_seed(6)
    models = {name: networks.build_network(name, SIZE, num_images=3, architecture="compact")
              for name in networks.NETWORK_SPECS}
    shared = networks.get_feature_extractor(models["fractal_dimension"])
    for model in models.values():  # five bit-identical copies of one f, as a shared backbone
        networks.get_feature_extractor(model).set_weights(shared.get_weights())
    rng = np.random.default_rng(3)
    side = SIZE // POOLING
    part = {kind: rng.integers(0, 255 * POOLING ** 2, (3, side, side)).astype(np.uint16)
            for kind in ("plain", "inverted")}
    separate = _SplitRunner(models, ())
    once = _SplitRunner(models, (), feature_source={name: "fractal_dimension"
                                                    for name in networks.NETWORK_SPECS})
    assert len(once.extractors) == 1 and len(separate.extractors) == len(networks.NETWORK_SPECS)
    expected, got = separate.run(part), once.run(part)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-6, err_msg=key)
