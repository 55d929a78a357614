"""θ̂ with an uncertainty: the bootstrap over the sample's images (hagg_tf.estimation.uncertainty),
its place in characterize's result, report and console, and digital shadows drawn over it."""
import dataclasses
import json
import pathlib

import numpy as np
import pytest

from hagg_tf import ModelParameters, sample_aggregate
from hagg_tf.estimation import uncertainty as unc
from hagg_tf.estimation.estimators import combine_mixing_ratio
from hagg_tf.estimation.shadows import collect_shadows, iter_shadows
from hagg_tf.stem import render_stem

REPO = pathlib.Path(__file__).resolve().parents[1]
THETA = ModelParameters(1.8, 0.5, 3, 2)
PIXEL = 9.6


def _outputs(count, seed=0, features=3):
    """Made-up per-image outputs of ``count`` images with known spread."""
    rng = np.random.default_rng(seed)
    wo3 = rng.normal(0.15, 0.05, (count, features))
    return {"fractal_dimension_per_image": rng.normal(1.8, 0.1, count),
            "mixing_ratio_regressor_per_image": rng.uniform(0.2, 0.8, count),
            "homogeneous_probability_per_image": rng.uniform(0.0, 0.4, count),
            "wo3_cluster_size_features": wo3,
            "tio2_cluster_size_features": rng.normal(0.1, 0.05, (count, features))}


def _rows(descriptors):
    """Descriptor records as a float array (NaN where S_TiO2 has no TiO2 cluster)."""
    return np.array([dataclasses.astuple(item) for item in descriptors], float)


def _all_equal(first, second):
    return all(np.array_equal(getattr(first, field.name), getattr(second, field.name))
               for field in dataclasses.fields(first))


# ----------------------------------------------------------------------------- the bootstrap

def test_the_same_seed_gives_the_same_replicates_and_another_seed_others(
        fake_characterize_model):
    model = fake_characterize_model(num_images=3, outputs=_outputs(12))
    first = unc.bootstrap_theta(model.per_image(None, None), model.cluster_heads, 3,
                                resamples=50, seed=7)[1]
    second = unc.bootstrap_theta(model.per_image(None, None), model.cluster_heads, 3,
                                 resamples=50, seed=7)[1]
    other = unc.bootstrap_theta(model.per_image(None, None), model.cluster_heads, 3,
                                resamples=50, seed=8)[1]
    assert _all_equal(first, second)
    assert first.shadow_thetas == second.shadow_thetas
    assert not np.array_equal(first.replicates, other.replicates)
    np.testing.assert_array_equal(unc.bootstrap_indices(12, 50, 7),
                                  unc.bootstrap_indices(12, 50, 7))


def test_the_point_estimate_is_the_models_and_the_heads_run_once(fake_characterize_model):
    model = fake_characterize_model(num_images=3, outputs=_outputs(10))
    expected = model.estimate(None, None)  # one stack per call, as serving_default
    model.head_calls = 0
    estimate, uncertainty = unc.bootstrap_theta(model.per_image(None, None),
                                                model.cluster_heads, 3, resamples=100)
    assert model.head_calls == 1  # θ̂'s stacks and every resample's: one call
    for field in dataclasses.fields(expected):
        np.testing.assert_allclose(getattr(estimate, field.name),
                                   getattr(expected, field.name), rtol=1e-6)
    assert uncertainty.estimate == estimate.theta and uncertainty.num_images == 10


def test_the_bootstrap_sd_of_a_mean_is_the_standard_error(fake_characterize_model):
    """For θ̂_Df, a mean over the images, the bootstrap s.d. estimates σ/√n, with σ the
    (plug-in, ddof = 0) s.d. of the per-image values; likewise for θ̂_ρ, the mean of ρ̂(I)."""
    count, resamples = 24, 4000
    outputs = _outputs(count, seed=3)
    model = fake_characterize_model(num_images=3, outputs=outputs)
    _, uncertainty = unc.bootstrap_theta(model.per_image(None, None), model.cluster_heads, 3,
                                         resamples=resamples, seed=1)
    rho = combine_mixing_ratio(outputs["mixing_ratio_regressor_per_image"],
                               outputs["homogeneous_probability_per_image"])
    for key, values in (("fractal_dimension", outputs["fractal_dimension_per_image"]),
                        ("mixing_ratio", rho)):
        expected = np.std(np.asarray(values, np.float32), ddof=0) / np.sqrt(count)
        # the Monte-Carlo error of a s.d. from B replicates is ~1/√(2B) ≈ 1.1 % here
        assert uncertainty.sd(key) == pytest.approx(expected, rel=0.06), key
        # and the replicates' mean is the estimate (a mean is unbiased under resampling)
        assert uncertainty.column(key).mean() == pytest.approx(
            np.mean(np.asarray(values, np.float32)), abs=4 * expected / np.sqrt(resamples))


def test_one_image_repeated_has_no_uncertainty(fake_characterize_model):
    same = {key: np.repeat(value[:1], 12, axis=0) for key, value in _outputs(12).items()}
    model = fake_characterize_model(num_images=3, outputs=same)
    estimate, uncertainty = unc.bootstrap_theta(model.per_image(None, None),
                                                model.cluster_heads, 3, resamples=20)
    for key in unc.PARAMETER_KEYS:
        assert uncertainty.sd(key) == pytest.approx(0.0, abs=1e-6)
        low, high = uncertainty.interval(key, 95)
        assert low == pytest.approx(high, abs=1e-6)
    assert uncertainty.distribution("wo3_cluster_size") == {str(estimate.wo3_cluster_size): 1.0}


def test_the_report_object_is_contract_b(fake_characterize_model):
    model = fake_characterize_model(num_images=3, outputs=_outputs(12, seed=5))
    estimate, uncertainty = unc.bootstrap_theta(model.per_image(None, None),
                                                model.cluster_heads, 3, resamples=200, seed=0)
    record = json.loads(json.dumps(uncertainty.as_dict()))  # JSON-safe as it is
    assert record["method"] == "bootstrap over the sample's images"
    assert (record["resamples"], record["seed"], record["num_images"]) == (200, 0, 12)
    assert list(record["parameters"]) == ["fractal_dimension", "mixing_ratio",
                                          "wo3_cluster_size", "tio2_cluster_size"]
    for key, value in zip(unc.PARAMETER_KEYS, estimate.theta):
        entry = record["parameters"][key]
        assert entry["estimate"] == value and entry["sd"] >= 0
        (low68, high68), (low95, high95) = entry["interval_68"], entry["interval_95"]
        assert low95 <= low68 <= value <= high68 <= high95, (key, entry)
        # percentile intervals of the replicates: the share inside is the level (± ties)
        column = uncertainty.column(key)
        inside = np.mean((column >= low95) & (column <= high95))
        assert inside >= 0.95 - 1e-9
        if key in unc.CLUSTER_SIZE_KEYS:
            assert all(isinstance(item, int) for item in (low68, high68, low95, high95))
            shares = entry["distribution"]
            assert sum(shares.values()) == pytest.approx(1.0)
            assert list(shares) == sorted(shares, key=int)
            assert shares == {str(int(size)): float(np.mean(column == size))
                              for size in np.unique(column)}
        else:
            assert "distribution" not in entry


def test_resamples_zero_is_off_and_bad_counts_are_refused(fake_characterize_model):
    model = fake_characterize_model(num_images=3, outputs=_outputs(6))
    estimate, uncertainty = unc.bootstrap_theta(model.per_image(None, None),
                                                model.cluster_heads, 3, resamples=0)
    assert uncertainty is None and estimate.num_images == 6
    for bad in (-1, 1, unc.MIN_RESAMPLES - 1, unc.MAX_RESAMPLES + 1, 2.5):
        with pytest.raises(ValueError, match="resamples"):
            unc.check_resamples(bad)
    with pytest.raises(ValueError, match="lack"):
        unc.bootstrap_theta({"fractal_dimension_per_image": [1.8]}, model.cluster_heads, 3)


def test_a_sample_of_exactly_nu_images_resamples_its_stack_rotations(fake_characterize_model):
    model = fake_characterize_model(num_images=4, outputs=_outputs(4, seed=2))
    estimate, uncertainty = unc.bootstrap_theta(model.per_image(None, None),
                                                model.cluster_heads, 4, resamples=30)
    assert len(estimate.wo3_cluster_size_per_subset) == 4  # the 4 rotations of the one stack
    assert uncertainty.replicates.shape == (30, 4)
    assert uncertainty.sd("fractal_dimension") > 0


# ------------------------------------------------------------- shadows over the uncertainty

def test_shadows_with_one_theta_each_are_reproducible_and_cycle_the_thetas():
    thetas = (ModelParameters(1.8, 0.5, 3, 2), ModelParameters(2.1, 0.3, 2, 1),
              ModelParameters(1.6, 0.7, 1, 3))
    first = list(iter_shadows(thetas, 7, seed=3, workers=1))
    second = list(iter_shadows(list(thetas), 7, seed=3, workers=1))
    np.testing.assert_array_equal(_rows([pair[1] for pair in first]),
                                  _rows([pair[1] for pair in second]))
    for index, ((aggregate, _), (again, _)) in enumerate(zip(first, second)):
        assert aggregate.params == thetas[index % 3]
        np.testing.assert_array_equal(aggregate.positions, again.positions)
        # shadow k is sample_aggregate(θ_k, seed, k): drawable again on its own
        alone = sample_aggregate(thetas[index % 3], 3, index)
        np.testing.assert_array_equal(aggregate.positions, alone.positions)


def test_shadows_over_equal_replicates_are_the_single_theta_shadows():
    single = collect_shadows(THETA, 6, seed=2, workers=1)
    repeated = collect_shadows([THETA] * 4, 6, seed=2, workers=1)
    for ours, theirs in zip(single[0], repeated[0]):
        np.testing.assert_array_equal(ours.positions, theirs.positions)
        np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_array_equal(_rows(single[1]), _rows(repeated[1]))
    assert single[2] == repeated[2]
    with pytest.raises(ValueError, match="non-empty"):
        next(iter_shadows([], 3))


def test_beam_shadows_with_one_theta_each_equal_the_local_ones(tmp_path):
    pytest.importorskip("apache_beam")
    from hagg_tf.estimation.beam_shadows import shadow_jobs
    from hagg_tf.estimation.characterize import _beam_shadows

    thetas = (ModelParameters(1.8, 0.5, 3, 2), ModelParameters(2.1, 0.3, 2, 1), THETA)
    jobs = shadow_jobs(thetas, 7, 4)
    assert [(theta, indices) for theta, _, indices in jobs] == [(thetas[0], [0, 2, 3, 5, 6]),
                                                               (thetas[1], [1, 4])]
    local = collect_shadows(thetas, 7, seed=4, workers=1)
    beam = _beam_shadows(thetas, 7, 4, 1, None, "DirectRunner", (), None)
    np.testing.assert_array_equal(_rows(beam[1]), _rows(local[1]))
    assert beam[2] == local[2] and len(beam[0]) == 7
    for ours, theirs in zip(beam[0], local[0]):
        np.testing.assert_array_equal(ours.positions, theirs.positions)


# --------------------------------------------------------------------------- characterize

@pytest.fixture(scope="module")
def sample_images():
    """Six small simulated images of one θ (64 px of 9.6 nm) and their electrons per pixel."""
    counts, electrons = [], []
    for index in range(6):
        image = render_stem(sample_aggregate(THETA, 11, index), seed=11, index=index,
                            image_size=64, pixel_size_nm=PIXEL)
        counts.append(image.counts)
        electrons.append(image.metadata["electrons_per_pixel"])
    return np.stack(counts), float(electrons[0])


def _characterize(model, images, **kwargs):
    from hagg_tf.estimation import characterize

    counts, electrons = images
    return characterize(counts, model=model, pixel_size_nm=PIXEL, electrons_per_pixel=electrons,
                        shadows=kwargs.pop("shadows", 5), workers=1, radius_mean_nm=6.0,
                        radius_sd_nm=1.5, particles="10-20", **kwargs)


def test_characterize_reports_the_uncertainty_and_draws_the_shadows_over_it(
        fake_characterize_model, sample_images, tmp_path):
    from hagg_tf.estimation import format_summary, write_outputs

    model = fake_characterize_model(num_images=3)
    result = _characterize(model, sample_images, resamples=40, seed=2)
    assert model.per_image_calls == 1 and model.head_calls == 1
    uncertainty = result.uncertainty
    assert uncertainty.resamples == 40 and uncertainty.seed == 2
    assert result.estimate.theta == model.estimate(*_counts_and_electrons(sample_images)).theta
    # shadow k from replicate k mod B
    assert result.shadow_theta == "bootstrap"
    for index, shadow in enumerate(result.shadows):
        assert shadow.params == uncertainty.shadow_thetas[index % 40]
    written = write_outputs(result, tmp_path / "out", figure=False, xyz=False)
    report = json.loads(written["report"].read_text())
    assert report["uncertainty"] == json.loads(json.dumps(uncertainty.as_dict()))
    assert report["shadows"]["theta_from"] == "bootstrap"
    assert "replicate k mod 40" in report["shadows"]["theta_note"]
    summary = format_summary(result)
    df = uncertainty.as_dict()["parameters"]["fractal_dimension"]
    low, high = df["interval_68"]
    assert (f"θ_Df = {result.estimate.fractal_dimension:.3f} ± {df['sd']:.3f} "
            f"(68 %: {low:.3f}–{high:.3f})") in summary
    assert "over θ̂'s uncertainty" in summary and "40 bootstrap resamples" in summary


def _counts_and_electrons(images):
    from hagg_tf.estimation import StemInput, prepare_images

    counts, electrons = images
    inputs = [StemInput(f"array[{k}]", image, "float64", PIXEL, electrons, {})
              for k, image in enumerate(counts)]
    prepared, _ = prepare_images(inputs, 64, PIXEL)
    return prepared.counts, prepared.electrons_per_pixel


def test_characterize_can_draw_every_shadow_from_the_estimate_or_switch_the_bootstrap_off(
        fake_characterize_model, sample_images):
    from hagg_tf.estimation import InputError, format_summary

    model = fake_characterize_model(num_images=3)
    from_estimate = _characterize(model, sample_images, resamples=40, shadow_theta="estimate")
    assert from_estimate.uncertainty is not None and from_estimate.shadow_theta == "estimate"
    assert all(shadow.params == from_estimate.shadow_parameters
               for shadow in from_estimate.shadows)
    assert from_estimate.report()["shadows"]["theta_from"] == "estimate"
    off = _characterize(model, sample_images, resamples=0)
    assert off.uncertainty is None and off.shadow_theta == "estimate"
    assert off.report()["uncertainty"] is None
    assert " ± " not in format_summary(off).splitlines()[1]
    # the same shadows either way when they come from θ̂
    for ours, theirs in zip(from_estimate.shadows, off.shadows):
        np.testing.assert_array_equal(ours.positions, theirs.positions)
    with pytest.raises(InputError, match="resamples > 0"):
        _characterize(model, sample_images, resamples=0, shadow_theta="bootstrap")
    with pytest.raises(InputError, match="shadow_theta"):
        _characterize(model, sample_images, shadow_theta="replicates")
    with pytest.raises(InputError, match="resamples"):
        _characterize(model, sample_images, resamples=3)


def test_a_model_without_per_image_outputs_is_used_through_estimate(
        fake_characterize_model, sample_images):
    base = fake_characterize_model(num_images=3)

    class OnlyEstimate(type(base)):
        has_per_image_outputs = False  # e.g. a SavedModel exported before contract A

        def cluster_heads(self, *args):  # the bootstrap's call; estimate's own go one by one
            assert len(args[0]) == 1, "the bootstrap ran on a model without per-image outputs"
            return super().cluster_heads(*args)

    stand_in = OnlyEstimate(base.version_dir, num_images=3)
    result = _characterize(stand_in, sample_images, resamples=40)
    assert result.uncertainty is None and result.shadow_theta == "estimate"
    assert any("no per-image outputs" in note for note in result.notes)


# ------------------------------------------------------------------- the real composite model

def _has_per_image_signature():
    metadata = REPO / "saved_models" / "characterize"
    return any("serving_per_image" in path.read_text()
               for path in metadata.glob("*/hagg_tf_export.json"))


@pytest.mark.skipif(not _has_per_image_signature(),
                    reason="the shipped export has no serving_per_image signature yet")
def test_the_real_models_theta_from_per_image_outputs_equals_its_estimate():
    from hagg_tf.estimation import (CharacterizeModel, find_image_files, load_stem_images,
                                    prepare_images)

    model = CharacterizeModel(REPO / "saved_models" / "characterize")
    paths, _ = find_image_files([REPO / "examples" / "sample_a"])
    inputs, _ = load_stem_images(paths)
    prepared, _ = prepare_images(inputs, model.image_size, model.pixel_size_nm)
    expected = model.estimate(prepared.counts, prepared.electrons_per_pixel)
    estimate, uncertainty = unc.estimate_with_uncertainty(
        model, prepared.counts, prepared.electrons_per_pixel, resamples=50)
    assert estimate.theta[2:] == expected.theta[2:]  # the rounded cluster sizes
    for field in dataclasses.fields(expected):
        np.testing.assert_allclose(getattr(estimate, field.name),
                                   getattr(expected, field.name), atol=1e-5)
    assert uncertainty.sd("fractal_dimension") > 0
