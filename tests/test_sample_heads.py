"""Sample heads of θ̂_Df and θ̂_ρ (hagg_tf.data.sample_heads, hagg_tf.training.sample_heads)."""
import numpy as np
import pytest

from hagg_tf.data.sample_heads import (SAMPLE_HEAD_TARGETS, SUMMARY_FEATURES, SampleHeads,
                                       SampleHeadsError, apply_sample_heads_tf,
                                       summary_features, summary_features_tf)
from hagg_tf.estimation.estimators import estimate_theta


def _outputs(rng, shape):
    return (rng.uniform(1.3, 2.7, shape).astype(np.float32),
            rng.uniform(0, 1, shape).astype(np.float32),
            rng.uniform(0, 1, shape).astype(np.float32))


def _random_heads(rng, hidden=(5, 3)):
    layers = {}
    for target in SAMPLE_HEAD_TARGETS:
        widths = (len(SUMMARY_FEATURES),) + hidden + (1,)
        layers[target] = tuple((rng.normal(0, 0.3, (a, b)).astype(np.float32),
                                rng.normal(0, 0.3, b).astype(np.float32))
                               for a, b in zip(widths[:-1], widths[1:]))
    return SampleHeads(layers)


def test_the_summary_is_invariant_to_the_order_and_its_histograms_sum_to_one():
    rng = np.random.default_rng(0)
    fd, reg, prob = _outputs(rng, (4, 7))
    features = summary_features(fd, reg, prob)
    assert features.shape == (4, len(SUMMARY_FEATURES)) and features.dtype == np.float32
    order = rng.permutation(7)
    np.testing.assert_allclose(summary_features(fd[:, order], reg[:, order], prob[:, order]),
                               features, rtol=0, atol=1e-6)
    np.testing.assert_allclose(features[:, 0], reg.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(features[:, 1], reg.std(axis=1), atol=1e-6)
    # Every value inside the centres' range spreads a weight of one over its two nearest bins.
    histograms = features[:, 6:]
    np.testing.assert_allclose(histograms[:, :11].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(histograms[:, 11:14].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(histograms[:, 14:].sum(axis=1), 1.0, atol=1e-5)
    one = summary_features(np.float32([[2.0]]), np.float32([[0.25]]), np.float32([[1.0]]))[0]
    assert one[1] == one[3] == one[5] == 0.0                     # one image: no spread
    np.testing.assert_allclose(one[6:17], [0, 0, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 0], atol=1e-6)


def test_tensorflow_and_numpy_give_the_same_estimate():
    rng = np.random.default_rng(1)
    heads = _random_heads(rng)
    fd, reg, prob = _outputs(rng, (6, 12))
    np.testing.assert_allclose(np.asarray(summary_features_tf(fd, reg, prob)),
                               summary_features(fd, reg, prob), rtol=0, atol=1e-6)
    graph = apply_sample_heads_tf(heads, fd, reg, prob)
    reference = heads(fd, reg, prob)
    for target in SAMPLE_HEAD_TARGETS:
        np.testing.assert_allclose(np.asarray(graph[target]), reference[target], atol=1e-5)
    assert reference["mixing_ratio"].min() >= 0 and reference["mixing_ratio"].max() <= 1


def test_the_heads_survive_a_file_round_trip_and_bad_files_are_refused(tmp_path):
    rng = np.random.default_rng(2)
    heads = _random_heads(rng)
    path = heads.save(tmp_path / "heads.npz")
    again = SampleHeads.load(path)
    fd, reg, prob = _outputs(rng, (3, 5))
    for target in SAMPLE_HEAD_TARGETS:
        np.testing.assert_array_equal(again(fd, reg, prob)[target], heads(fd, reg, prob)[target])
    assert SampleHeads.from_arrays({"other": np.zeros(1)}, prefix="sample_heads/") is None
    arrays = heads.to_arrays()
    del arrays["mixing_ratio/0/kernel"]
    np.savez(tmp_path / "partial.npz", **arrays)
    with pytest.raises(SampleHeadsError, match="no layers for mixing_ratio"):
        SampleHeads.load(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SampleHeadsError, match="not a sample-heads file"):
        SampleHeads.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        SampleHeads.load(tmp_path / "missing.npz")


def _shrunk_outputs(rng, thetas, images_per_theta):
    """Per-image outputs pulled halfway to the middle of the range, as the networks' are."""
    theta = np.repeat(thetas, images_per_theta, axis=0)
    count = len(theta)
    labels = {"theta": theta, "theta_id": np.repeat(np.arange(len(thetas)), images_per_theta)}
    outputs = {
        "fractal_dimension": (2.0 + 0.5 * (theta[:, 0] - 2.0)
                              + rng.normal(0, 0.05, count)).astype(np.float32),
        "mixing_ratio_regressor": np.clip(0.5 + 0.5 * (theta[:, 1] - 0.5)
                                          + rng.normal(0, 0.05, count), 0, 1).astype(np.float32),
        "mixing_ratio_classifier": rng.uniform(0, 0.2, count).astype(np.float32),
    }
    return outputs, labels


def test_fitted_heads_undo_the_pull_to_the_middle_that_the_means_keep():
    from hagg_tf.training.sample_heads import fit_sample_heads

    rng = np.random.default_rng(3)

    def thetas(count):
        return np.stack([rng.uniform(1.5, 2.5, count), rng.uniform(0.1, 0.9, count),
                         np.full(count, 3.0), np.full(count, 3.0)], axis=1)

    train = _shrunk_outputs(rng, thetas(300), 12)
    validation = _shrunk_outputs(rng, thetas(40), 12)
    test_outputs, test_labels = _shrunk_outputs(rng, thetas(60), 12)
    heads, report = fit_sample_heads(*train, *validation, epochs=25, seed=0)
    assert set(report) == set(SAMPLE_HEAD_TARGETS) and all(value > 0 for value in report.values())
    groups = np.arange(60 * 12).reshape(60, 12)
    estimated = heads(*(test_outputs[key][groups] for key in (
        "fractal_dimension", "mixing_ratio_regressor", "mixing_ratio_classifier")))
    truth = test_labels["theta"][groups[:, 0]]
    for target, key, column in (("fractal_dimension", "fractal_dimension", 0),
                                ("mixing_ratio", "mixing_ratio_regressor", 1)):
        mean_error = np.abs(test_outputs[key][groups].mean(axis=1) - truth[:, column]).mean()
        head_error = np.abs(estimated[target] - truth[:, column]).mean()
        assert head_error < 0.5 * mean_error, (target, head_error, mean_error)


def test_the_numpy_heads_are_the_keras_model_they_were_fitted_as():
    import keras

    from hagg_tf.data.sample_heads import SAMPLE_HEAD_HIDDEN_UNITS
    from hagg_tf.training.sample_heads import fit_sample_heads

    rng = np.random.default_rng(4)
    thetas = np.stack([rng.uniform(1.5, 2.5, 30), rng.uniform(0.1, 0.9, 30),
                       np.full(30, 2.0), np.full(30, 2.0)], axis=1)
    heads, _ = fit_sample_heads(*_shrunk_outputs(rng, thetas, 6), *_shrunk_outputs(rng, thetas, 6),
                                epochs=2, seed=1)
    fd, reg, prob = _outputs(rng, (5, 9))
    features = summary_features(fd, reg, prob)
    inputs = keras.Input((len(SUMMARY_FEATURES),))
    x = inputs
    for units in SAMPLE_HEAD_HIDDEN_UNITS:
        x = keras.layers.Dense(units, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(1)(x))
    model.set_weights([array for layer in heads.layers["fractal_dimension"] for array in layer])
    np.testing.assert_allclose(heads.apply(features)["fractal_dimension"],
                               np.asarray(model(features))[:, 0], atol=1e-5)


def test_estimate_theta_takes_the_heads_and_keeps_the_means_beside_them():
    rng = np.random.default_rng(5)
    heads = _random_heads(rng)
    fd, reg, prob = _outputs(rng, 12)
    sizes = (np.float32([3.2]), np.float32([1.6]))
    plain = estimate_theta(fd, reg, prob, *sizes)
    assert plain.fractal_dimension == plain.fractal_dimension_images_mean == \
        pytest.approx(float(fd.mean()))
    assert plain.mixing_ratio == plain.mixing_ratio_images_mean
    with_heads = estimate_theta(fd, reg, prob, *sizes, sample_heads=heads)
    expected = heads(fd, reg, prob)
    assert with_heads.fractal_dimension == pytest.approx(float(expected["fractal_dimension"]))
    assert with_heads.mixing_ratio == pytest.approx(float(expected["mixing_ratio"]))
    assert with_heads.fractal_dimension_images_mean == plain.fractal_dimension
    assert with_heads.mixing_ratio_images_mean == plain.mixing_ratio
    assert with_heads.theta[2:] == plain.theta[2:] == (3, 2)
    assert with_heads.as_dict()["mixing_ratio_images_mean"] == plain.mixing_ratio


def test_predictions_carry_the_heads_and_the_evaluation_uses_them(tmp_path):
    from hagg_tf.evaluation.paper_evaluation import theta_level_estimates
    from hagg_tf.evaluation.predictions import (SAMPLE_HEADS_PREFIX, Predictions,
                                                PredictionsError, load_predictions,
                                                save_predictions)

    rng = np.random.default_rng(6)
    count = 24
    fd, reg, prob = _outputs(rng, count)
    arrays = {"record_index": np.arange(count), "theta_id": np.repeat([0, 1], 12),
              "theta": np.repeat([[1.8, 0.3, 2, 2], [2.2, 0.7, 4, 4]], 12, axis=0),
              "fractal_dimension": fd, "mixing_ratio": reg, "homogeneous": np.zeros(count, bool),
              "num_particles": np.full(count, 30), "fractal_dimension_pred": fd,
              "mixing_ratio_regressor_pred": reg, "homogeneous_probability_pred": prob * 0.4}
    groups = np.arange(count).reshape(2, 12)
    without = theta_level_estimates(Predictions(dict(arrays)), groups)
    np.testing.assert_allclose(without["fractal_dimension"], fd[groups].mean(axis=1), rtol=1e-6)
    heads = _random_heads(rng)
    arrays.update(heads.to_arrays(SAMPLE_HEADS_PREFIX))
    path = save_predictions(Predictions(arrays), tmp_path / "predictions.npz")
    loaded = load_predictions(path)
    with_heads = theta_level_estimates(loaded, groups)
    expected = heads(fd[groups], reg[groups], prob[groups] * 0.4)
    np.testing.assert_allclose(with_heads["mixing_ratio"], expected["mixing_ratio"], atol=1e-6)
    np.testing.assert_allclose(with_heads["fractal_dimension_images_mean"],
                               without["fractal_dimension"])
    del arrays[f"{SAMPLE_HEADS_PREFIX}fractal_dimension/1/bias"]
    with pytest.raises(PredictionsError, match="bias missing"):
        Predictions(arrays)
