"""Particle sizes of the digital shadows (issue 10, point 5): the radius distribution and the
particles per aggregate estimated from the images recover the truth on simulated aggregates,
given values override them, the report and the console record them, bad values fail with one
line."""
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from hagg_tf.estimation import sample_size as ss
from hagg_tf.model.aggregate import Aggregate
from hagg_tf.model.generator import sample_aggregate
from hagg_tf.model.parameters import TIO2, WO3, GeneratorConfig, ModelParameters
from hagg_tf.stem import render_stem
from hagg_tf.stem.tables import HaadfTable, HaadfTables, load_tables

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "characterize.py"
EXAMPLE = REPO / "examples" / "sample_a"
THETA = ModelParameters(1.8, 0.5, 2, 2)
PIXEL = 1.2


def _sample(config: GeneratorConfig, seed: int, images: int = 6, size: int = 320):
    """``images`` aggregates drawn with ``config``, rendered, measured: (measurements,
    aggregates)."""
    aggregates, measurements = [], []
    for index in range(images):
        aggregate = sample_aggregate(THETA, seed, index, config)
        image = render_stem(aggregate, seed=seed, index=index, image_size=size)
        assert image.metadata["particles_outside"] == 0  # the truth is the whole aggregate
        intensity = ss.image_intensity(image.counts, image.metadata["electrons_per_pixel"])
        measurements.append(ss.measure_image(intensity, PIXEL, f"image-{index}"))
        aggregates.append(aggregate)
    return measurements, aggregates


SMALL = GeneratorConfig(radius_mean=5.5, radius_std=1.4, min_size=30, max_size=60)
LARGE = GeneratorConfig(radius_mean=10.5, radius_std=2.6, min_size=15, max_size=40)


@pytest.fixture(scope="module", params=[SMALL, LARGE], ids=["r5.5nm", "r10.5nm"])
def simulated(request):
    return request.param, *_sample(request.param, seed=31)


# ----------------------------------------------------------------- the estimate vs the truth

def test_radius_and_particle_counts_are_recovered_on_simulated_aggregates(simulated):
    """Tolerances from benchmarks/bench_sample_size.py (12-image samples: r̂ mean within 10 %,
    r̂ s.d. within 40 %, the sample's mean N̂ within 40 % in 90 % of the samples; with the true
    radius distribution and WO3 share N̂ is within 12 % of the sample mean), widened a little
    for these 6-image samples."""
    config, measurements, aggregates = simulated
    radii = np.concatenate([aggregate.radii for aggregate in aggregates])
    counts = np.array([aggregate.size for aggregate in aggregates])
    estimate = ss.estimate_sample_size(measurements)
    assert estimate.details["domes"] >= 20
    assert abs(estimate.radius_mean_nm / radii.mean() - 1) < 0.12, estimate
    assert abs(estimate.radius_sd_nm / radii.std() - 1) < 0.5, estimate
    assert abs(np.mean(estimate.particles_per_image) / counts.mean() - 1) < 0.4, estimate
    assert estimate.sources == dict.fromkeys(("radius_mean_nm", "radius_sd_nm", "particles"),
                                             "estimated from 6 images")
    assert estimate.particles == (min(estimate.particles_per_image),
                                  max(estimate.particles_per_image))
    # The count itself, with the sample's radius distribution and composition known ...
    wo3 = np.mean(np.concatenate([aggregate.labels for aggregate in aggregates]) == WO3)
    known = ss.estimate_sample_size(measurements, radius_mean_nm=config.radius_mean,
                                    radius_sd_nm=config.radius_std, wo3_share=wo3)
    assert abs(np.mean(known.particles_per_image) / counts.mean() - 1) < 0.12
    # ... and with each aggregate's own: the projected volume does not care about overlaps.
    for measured, aggregate in zip(measurements, aggregates):
        own = ss.estimate_sample_size([measured], radius_mean_nm=aggregate.radii.mean(),
                                      radius_sd_nm=aggregate.radii.std(),
                                      wo3_share=np.mean(aggregate.labels == WO3))
        assert abs(own.particles_per_image[0] / aggregate.size - 1) < 0.15, (own, aggregate.size)
    assert not estimate.warnings


def test_a_support_film_and_a_noisy_detector_leave_the_estimate_alone():
    """On a 10-nm carbon film with gain, dark offset and read noise (normalized as quantitative
    STEM does, background measured on the image), the estimate stays within the tolerances of
    the clean images (benchmarks/bench_sample_size.py --conditions=realistic: about the same
    errors as without)."""
    from hagg_tf.stem.conditions import ImagingConditions

    conditions = ImagingConditions(film_thickness_nm=10.0, gain=1.5, dark_offset=200.0,
                                   read_noise=8.0)
    measurements, aggregates = [], []
    for index in range(6):
        aggregate = sample_aggregate(THETA, 31, index, SMALL)
        image = render_stem(aggregate, seed=31, index=index, image_size=320,
                            conditions=conditions)
        intensity = ss.image_intensity(image.counts, image.metadata["electrons_per_pixel"],
                                       image.metadata)
        measurements.append(ss.measure_image(intensity, PIXEL))
        aggregates.append(aggregate)
    assert measurements[0].background > 0 and measurements[0].background_noise > 0
    radii = np.concatenate([aggregate.radii for aggregate in aggregates])
    counts = np.array([aggregate.size for aggregate in aggregates])
    estimate = ss.estimate_sample_size(measurements)
    assert abs(estimate.radius_mean_nm / radii.mean() - 1) < 0.12, estimate
    assert abs(np.mean(estimate.particles_per_image) / counts.mean() - 1) < 0.4, estimate
    assert not any(item.touches_border for item in measurements)  # noise is no aggregate


def test_a_given_radius_is_used_for_the_count():
    measurements, _ = _sample(SMALL, seed=32, images=2, size=256)
    thin = ss.estimate_sample_size(measurements, radius_mean_nm=5.0, radius_sd_nm=1.0,
                                   wo3_share=0.5)
    thick = ss.estimate_sample_size(measurements, radius_mean_nm=10.0, radius_sd_nm=2.0,
                                    wo3_share=0.5)
    # Twice the radius, eight times the volume per particle (up to the tables' curvature).
    ratio = np.asarray(thin.particles_per_image) / np.asarray(thick.particles_per_image)
    assert np.all((6.0 < ratio) & (ratio < 9.0)), ratio
    assert thin.sources["radius_mean_nm"] == "given"
    assert thin.sources["particles"] == "estimated from 2 images"


def test_an_aggregate_cut_by_the_border_is_a_lower_bound_with_a_warning():
    config = GeneratorConfig(radius_mean=8.0, radius_std=2.0, min_size=60, max_size=60)
    aggregate = sample_aggregate(THETA, 3, 0, config)
    image = render_stem(aggregate, seed=3, index=0, image_size=96)  # 115 nm: far too small
    assert image.metadata["particles_outside"] > 0
    measured = ss.measure_image(ss.image_intensity(image.counts,
                                                   image.metadata["electrons_per_pixel"]),
                                PIXEL, "cut.png")
    assert measured.touches_border
    estimate = ss.estimate_sample_size([measured], radius_mean_nm=8.0, radius_sd_nm=2.0)
    assert estimate.particles_per_image[0] < aggregate.size
    assert any("cut by the image border" in warning and "cut.png" in warning
               for warning in estimate.warnings)


def _single_sphere(radius, label, focal_offset=0.0, tables=None, noise=True):
    aggregate = Aggregate(positions=np.zeros((1, 3)), radii=np.array([radius]),
                          labels=np.array([label]), cluster_ids=np.array([0]))
    return render_stem(aggregate, seed=5, index=0, image_size=96, tables=tables,
                       focal_plane_nm=focal_offset, shot_noise=noise)


@pytest.mark.parametrize("radius", [5.0, 9.0])
@pytest.mark.parametrize("label", [WO3, TIO2])
@pytest.mark.parametrize("focal_offset", [0.0, 80.0])
def test_an_isolated_sphere_is_one_dome_of_its_radius_and_material(radius, label, focal_offset):
    """Whatever the material (four times brighter WO3) and the defocus blur (σ = 80 nm × tan β
    = 1.7 nm): one dome, its radius within 8 %, its material right."""
    image = _single_sphere(radius, label, focal_offset)
    measured = ss.measure_image(ss.image_intensity(image.counts,
                                                   image.metadata["electrons_per_pixel"]), PIXEL)
    assert measured.dome_radii_nm.shape == (1,)
    assert abs(measured.dome_radii_nm[0] / radius - 1) < 0.08, measured.dome_radii_nm
    assert bool(measured.dome_wo3[0]) == (label == WO3)
    assert not measured.touches_border


# ------------------------------------------------------------------------------- the physics

def _linear_tables(slope_wo3, slope_tio2) -> HaadfTables:
    thickness = np.array([0.0, 64.0])
    return HaadfTables([HaadfTable("WO3", WO3, "p", "o", thickness, slope_wo3 * thickness),
                        HaadfTable("TiO2", TIO2, "p", "o", thickness, slope_tio2 * thickness)])


def test_sphere_intensity_is_the_volume_times_the_slope_for_linear_tables():
    tables = _linear_tables(0.0025, 0.0006)
    radii = np.array([3.0, 7.5, 12.0])
    for label, slope in ((WO3, 0.0025), (TIO2, 0.0006)):
        expected = slope * 4.0 / 3.0 * math.pi * radii ** 3
        np.testing.assert_allclose(ss.sphere_integrated_intensity(label, radii, tables),
                                   expected, rtol=1e-5)


@pytest.mark.parametrize("label", [WO3, TIO2])
def test_a_rendered_sphere_integrates_to_its_table_integral(label):
    """Σ pixels of the rendered, noise-free sphere × pixel area = (π/2)∫₀^{2r} t I(t) dt with the
    table it was drawn with (a one-table set, so the average over tables is that table), also
    when blurred (the blur moves intensity, it does not make any)."""
    shipped = load_tables()
    chosen = [next(table for table in shipped.tables if table.label == material)
              for material in (WO3, TIO2)]
    tables = HaadfTables(chosen)
    for focal_offset in (0.0, 60.0):
        image = _single_sphere(8.0, label, focal_offset, tables=tables, noise=False)
        total = float(image.intensity.sum()) * PIXEL ** 2
        expected = float(ss.sphere_integrated_intensity(label, 8.0, tables))
        assert abs(total / expected - 1) < 0.01, (total, expected)


def test_expected_particle_intensity_averages_over_the_lognormal_and_the_materials():
    tables = load_tables()
    rng = np.random.default_rng(0)
    config = GeneratorConfig(radius_mean=7.0, radius_std=2.0)
    mu, sigma = config.lognormal_mu_sigma
    radii = rng.lognormal(mu, sigma, 200_000)
    monte_carlo = (0.3 * ss.sphere_integrated_intensity(WO3, radii, tables).mean()
                   + 0.7 * ss.sphere_integrated_intensity(TIO2, radii, tables).mean())
    quadrature = ss.expected_particle_intensity(7.0, 2.0, 0.3, tables)
    assert abs(quadrature / monte_carlo - 1) < 0.01


def test_the_wo3_share_of_the_domes_is_corrected_for_their_detection():
    flags = np.array([True] * 6 + [False] * 4)
    odds = 0.6 / 0.4 / ss.WO3_DOME_ODDS
    assert ss.wo3_share_from_domes(flags) == pytest.approx(odds / (1 + odds))
    assert ss.wo3_share_from_domes(np.zeros(0, bool)) == 0.5
    assert 0 < ss.wo3_share_from_domes(np.ones(3, bool)) < 1  # three domes: not a pure sample


# ----------------------------------------------------------------------- the user's settings

def test_particles_and_radius_settings_are_parsed_and_bounded():
    assert ss.parse_particles("40") == (40, 40)
    assert ss.parse_particles("20-80") == (20, 80)
    assert ss.parse_particles((5, 9)) == (5, 9)
    for bad in ("80-20", "0", "abc", "10-", f"1-{ss.MAX_PARTICLES + 1}", "-5"):
        with pytest.raises(ss.SampleSizeError, match="--particles"):
            ss.parse_particles(bad)
    ss.check_radius(12.0, 3.0)
    ss.check_radius(None, None)
    for mean, sd, flag in ((0.5, None, "--radius_mean_nm"), (60.0, None, "--radius_mean_nm"),
                           (float("nan"), None, "--radius_mean_nm"),
                           (10.0, 11.0, "--radius_sd_nm"), (10.0, 0.0, "--radius_sd_nm")):
        with pytest.raises(ss.SampleSizeError, match=flag):
            ss.check_radius(mean, sd)


def test_given_settings_come_first_then_a_fixed_config_then_the_estimate():
    everything = ss.size_for_shadows([], radius_mean_nm=12.0, radius_sd_nm=3.0,
                                     particles="20-80")  # no image needed: nothing measured
    assert everything.generator_config() == GeneratorConfig()  # the paper's model, exactly
    assert set(everything.sources.values()) == {"given"}
    fixed = ss.size_for_shadows([], generator_config=GeneratorConfig(min_size=8, max_size=9),
                                radius_mean_nm=6.0, radius_sd_nm=1.5)
    assert fixed.generator_config(GeneratorConfig(min_size=8, max_size=9)) == GeneratorConfig(
        radius_mean=6.0, radius_std=1.5, min_size=8, max_size=9)
    assert fixed.sources["radius_mean_nm"] == "given"
    assert fixed.sources["particles"] == "given (generator settings)"
    assert "radius 6.0 ± 1.5 nm (s.d.), 8–9 particles per aggregate (radius mean: given; " \
           "radius sd: given; particles: given (generator settings))" == fixed.describe()
    with pytest.raises(ss.SampleSizeError):
        ss.size_for_shadows([], radius_mean_nm=5.0, radius_sd_nm=6.0)


# ------------------------------------------------------------------- characterize and report

class _StubModel:
    """Stands in for the composite SavedModel: its interface, fixed network outputs, no
    TensorFlow (characterize's size estimate and shadows do not depend on the networks)."""

    image_size, num_images, pixel_size_nm, model_card = 128, 2, PIXEL, {}

    def __init__(self, folder):
        self.version_dir = pathlib.Path(folder)
        self.metadata = {"image_size": 128, "num_images": 2, "pixel_size_nm": PIXEL}

    def estimate(self, counts, electrons_per_pixel):
        from hagg_tf.estimation import estimate_theta

        count = len(counts)
        return estimate_theta(np.full(count, 1.8), np.full(count, 0.5), np.full(count, 0.1),
                              [2.0], [2.0])


@pytest.fixture()
def stub_model(tmp_path, monkeypatch):
    from hagg_tf.estimation import model

    stub = _StubModel(tmp_path)
    monkeypatch.setattr(model, "CharacterizeModel", _StubModel)  # isinstance() in characterize
    return stub


def _counts(config, seed, images=3, size=256):
    stack = []
    for index in range(images):
        aggregate = sample_aggregate(THETA, seed, index, config)
        stack.append(render_stem(aggregate, seed=seed, index=index, image_size=size).counts)
    return np.stack(stack)


def test_characterize_draws_the_shadows_with_the_estimated_sizes(stub_model, tmp_path):
    from hagg_tf.estimation import characterize, format_summary, write_outputs

    electrons = 149.0 * (10 * PIXEL) ** 2
    result = characterize(_counts(SMALL, 33), model=stub_model, pixel_size_nm=PIXEL,
                          electrons_per_pixel=electrons, shadows=4, workers=1)
    size = result.sample_size
    assert set(size.sources.values()) == {"estimated from 3 images"}
    assert abs(size.radius_mean_nm / SMALL.radius_mean - 1) < 0.2
    radii = np.concatenate([shadow.radii for shadow in result.shadows])
    assert abs(radii.mean() / size.radius_mean_nm - 1) < 0.2  # drawn with the estimate
    low, high = size.particles
    assert all(low <= shadow.size < high + 2 for shadow in result.shadows)  # + a last cluster
    line = [text for text in format_summary(result).splitlines()
            if text.startswith("Particles of the digital shadows: ")]
    assert line == [f"Particles of the digital shadows: {size.describe()}"]
    assert "(estimated from 3 images)" in line[0]
    write_outputs(result, tmp_path / "out", figure=False, xyz=False)
    record = json.loads((tmp_path / "out" / "report.json").read_text())["shadows"]
    recorded = record["size_distribution"]
    assert recorded["particles"] == [low, high]
    assert recorded["radius_mean_nm"] == round(size.radius_mean_nm, 3)
    assert recorded["sources"]["particles"] == "estimated from 3 images"
    assert len(recorded["particles_per_image"]) == 3 and recorded["estimate"]["domes"] > 0


def test_characterize_with_the_papers_sizes_draws_the_papers_shadows(stub_model):
    """Given the paper's model, the shadows are the ones drawn before this estimate existed
    (``collect_shadows`` with the default ``GeneratorConfig``), byte for byte."""
    from hagg_tf.estimation import characterize
    from hagg_tf.estimation.shadows import collect_shadows

    result = characterize(_counts(SMALL, 34, images=2), model=stub_model, pixel_size_nm=PIXEL,
                          electrons_per_pixel=21456.0, shadows=3, workers=1,
                          radius_mean_nm=12.0, radius_sd_nm=3.0, particles="20-80")
    assert set(result.sample_size.sources.values()) == {"given"}
    before, _, _ = collect_shadows(result.shadow_parameters, 3, seed=0, workers=1)
    for mine, theirs in zip(result.shadows, before):
        assert np.array_equal(mine.positions, theirs.positions)
        assert np.array_equal(mine.radii, theirs.radii)
    assert result.report()["shadows"]["size_distribution"]["sources"]["radius_sd_nm"] == "given"


# ------------------------------------------------------------------------------------- CLI

def _run_tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=300)




@pytest.mark.parametrize("flags, named", [
    (["--particles=80-20"], "--particles"),
    (["--particles=many"], "--particles"),
    (["--particles=0"], "--particles"),
    (["--radius_mean_nm=0.2"], "radius_mean_nm"),
    (["--radius_mean_nm=nan"], "radius_mean_nm"),
    (["--radius_mean_nm=10", "--radius_sd_nm=12"], "--radius_sd_nm"),
    (["--radius_sd_nm=-1"], "radius_sd_nm"),
])
def test_bad_size_flags_get_one_error_line_and_exit_status_2(one_error_line, flags, named):
    assert named in one_error_line(_run_tool(EXAMPLE, *flags))


@pytest.mark.slow
def test_tool_records_given_sizes_in_the_console_and_the_report(tmp_path):
    """The paper's fixed model from the command line (25 s: TensorFlow and the networks)."""
    output = tmp_path / "out"
    result = _run_tool(EXAMPLE, f"--output={output}", "--shadows=3", "--nofigure",
                       "--particles=20-80", "--radius_mean_nm=12", "--radius_sd_nm=3")
    assert result.returncode == 0, result.stderr
    assert ("Particles of the digital shadows: radius 12.0 ± 3.0 nm (s.d.), 20–80 particles "
            "per aggregate (given)") in result.stdout
    report = json.loads((output / "report.json").read_text())
    recorded = report["shadows"]["size_distribution"]
    assert recorded["particles"] == [20, 80] and recorded["radius_mean_nm"] == 12.0
    assert set(recorded["sources"].values()) == {"given"}
