"""The ``realistic`` preset: drawn imaging conditions per record, reproducible from (seed, index),
with the paper preset's determinism, sharding, resume and checksums."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from hagg_tf.data import (DatasetError, build_design, generate_dataset, preset,  # noqa: E402
                          verify_dataset)
from hagg_tf.data import records, writer  # noqa: E402
from hagg_tf.data.manifest import json_sha256  # noqa: E402
from hagg_tf.data.randomization import (REALISTIC_RANGES, ConditionRanges,  # noqa: E402
                                        acquisition_pixels, draw_conditions,
                                        generator_settings)

ROOT = Path(__file__).resolve().parents[1]
TINY_REALISTIC = preset("tiny", conditions="realistic")
#: json_sha256(preset("paper").to_dict()) before the realistic preset existed: the paper
#: preset's settings, and so the settings_sha256 its databases are resumed and checked by.
PAPER_CONFIG_SHA256 = "05de9c5f3aa2ee103575f5ee6ece050959e99e4be2c5be162f918c7015367174"


@pytest.fixture(scope="module")
def realistic(tmp_path_factory):
    """The tiny realistic database (48 records at 64 px), written with two workers."""
    output = tmp_path_factory.mktemp("realistic") / "db"
    report = generate_dataset(output, TINY_REALISTIC, workers=2, progress=False)
    assert report.complete and report.records_written == 48
    return output


def _digests(directory: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.glob("*.tfrecord"))}


def _samples(directory: Path):
    return [sample for path in sorted(directory.glob("*.tfrecord"))
            for sample in records.read_samples(path)]


def test_paper_preset_settings_are_unchanged():
    config = preset("paper").to_dict()
    assert "conditions" not in config and "condition_ranges" not in config
    assert json_sha256(config) == PAPER_CONFIG_SHA256


def test_realistic_preset_is_the_paper_design_with_named_ranges():
    paper, realistic = preset("paper"), preset("realistic")
    assert realistic.conditions == "realistic" and realistic.replace(conditions=None) == paper
    first, second = build_design(paper), build_design(realistic)
    assert np.array_equal(first.thetas, second.thetas)
    assert np.array_equal(first.sample_split, second.sample_split)
    assert all(np.array_equal(a, b) for split in first.shards
               for a, b in zip(first.shards[split], second.shards[split]))
    settings = realistic.to_dict()
    assert settings["condition_ranges"] == REALISTIC_RANGES.to_dict()
    assert type(realistic).from_dict(json.loads(json.dumps(settings))) == realistic
    with pytest.raises(ValueError, match="realistic"):
        preset("paper", conditions="nonsense")


def test_draws_reproduce_from_seed_and_index_and_stay_in_their_ranges():
    ranges, count = REALISTIC_RANGES, 2000
    draws = [draw_conditions(7, index) for index in range(count)]
    assert draw_conditions(7, 1999) == draws[1999]  # no hidden state: order does not matter
    assert draw_conditions(8, 5) != draws[5]
    film_free = stable = 0
    for imaging, generator in draws:
        if imaging.film_thickness_nm == 0:
            film_free += 1
        else:
            assert ranges.film_thickness_nm[0] <= imaging.film_thickness_nm \
                <= ranges.film_thickness_nm[1]
        for name in ("gain", "dark_offset", "read_noise", "focal_plane_offset_nm",
                     "probe_blur_nm", "line_jitter_nm", "dose"):
            low, high = getattr(ranges, name)
            assert low <= getattr(imaging, name) <= high, name
        assert math.hypot(*imaging.drift_nm) <= ranges.drift_nm[1] + 1e-12
        stable += imaging.line_jitter_nm == 0 and imaging.drift_nm == (0.0, 0.0)
        # The acquisition holds the grid's 614.4 nm field of view in whole pixels.
        pixels = acquisition_pixels(614.4, imaging.pixel_size_nm)
        assert pixels * imaging.pixel_size_nm == pytest.approx(614.4, rel=1e-12)
        low, high = ranges.pixel_size_nm
        assert 614.4 / high - 1 <= pixels <= 614.4 / low + 1
        radius = generator.radius_mean
        assert ranges.radius_mean_nm[0] <= radius <= ranges.radius_mean_nm[1]
        fraction = generator.radius_std / radius
        assert ranges.radius_sd_fraction[0] - 1e-12 <= fraction <= ranges.radius_sd_fraction[1]
        assert generator.min_size == generator.max_size
        assert ranges.particles[0] <= generator.min_size <= ranges.max_particles(radius)
    # Film-free and stable-scan shares: binomial, within 4 standard deviations.
    for observed, share in ((film_free, ranges.film_free_fraction),
                            (stable, ranges.scan_stable_fraction)):
        assert abs(observed - share * count) <= 4 * math.sqrt(count * share * (1 - share))
    # Log-uniform dose: the median is the geometric mean of the bounds (±4 s.e. of a median).
    doses = np.array([imaging.dose for imaging, _ in draws])
    log_median = np.log(np.median(doses))
    spread = (np.log(300) - np.log(30)) / math.sqrt(12)
    assert abs(log_median - 0.5 * (np.log(30) + np.log(300))) < 4 * 1.2533 * spread / math.sqrt(count)


def test_particle_cap_keeps_the_paper_size_at_the_paper_radius_and_reaches_300():
    assert REALISTIC_RANGES.max_particles(12.0) == 80  # the paper's N_max at its 12 nm
    assert REALISTIC_RANGES.max_particles(5.0) == 300
    assert REALISTIC_RANGES.max_particles(6.0) < 300
    particles = np.array([draw_conditions(0, index)[1].min_size for index in range(3000)])
    assert particles.min() <= 11 and particles.max() >= 250
    # The paper preset's own ranges keep N ≤ 80 at 12 nm.
    assert ConditionRanges().max_particles(12.0) == 80


def test_every_record_carries_its_conditions(realistic):
    manifest = verify_dataset(realistic)
    assert set(records.CONDITION_FEATURE_KEYS) <= set(manifest["feature_keys"])
    settings = json.loads((realistic / "settings.json").read_text())
    assert settings["config"]["conditions"] == "realistic" and "film_table" in settings
    samples = _samples(realistic)
    assert sorted(sample.index for sample in samples) == list(range(48))
    grid = TINY_REALISTIC.effective_pixel_size_nm
    for sample in samples:
        imaging, generator = draw_conditions(TINY_REALISTIC.seed, sample.index,
                                             image_size=64, grid_pixel_size_nm=grid)
        assert sample.conditions == {"imaging": imaging.to_dict(),
                                     "generator": generator_settings(generator)}
        metadata = sample.metadata
        assert metadata["conditions"] == imaging.to_dict()
        assert metadata["pixel_size_nm"] == grid and sample.counts.shape == (64, 64)
        acquisition = metadata["acquisition"]
        assert acquisition["pixel_size_nm"] == imaging.pixel_size_nm
        size = acquisition_pixels(64 * grid, imaging.pixel_size_nm)
        assert acquisition["image_size"] == [size, size]
        # Resampling keeps the dose per area: every level scales with the pixel area.
        area = (grid / imaging.pixel_size_nm) ** 2
        assert sample.electrons_per_pixel == pytest.approx(
            imaging.dose * (10 * grid) ** 2, rel=1e-9)
        assert sample.dark_level == pytest.approx(imaging.dark_offset * area, rel=1e-12)
        assert sample.beam_level == pytest.approx(imaging.gain * sample.electrons_per_pixel,
                                                  rel=1e-9)
        assert sample.aggregate.target_size == generator.min_size


def test_normalized_background_is_the_film_intensity_of_the_drawn_thickness(realistic):
    from hagg_tf.estimation.domain import image_statistics
    from hagg_tf.stem.tables import load_film_table

    film = load_film_table()
    checked = 0
    for sample in _samples(realistic):
        if sample.metadata["particles_outside"]:
            continue  # an aggregate cut by the border would sit in the frame
        intensity = (sample.counts.astype(np.float64) - sample.dark_level) / sample.beam_level
        thickness = sample.conditions["imaging"]["film_thickness_nm"]
        expected = float(film(thickness)) if thickness > 0 else 0.0
        statistics = image_statistics(intensity, TINY_REALISTIC.effective_pixel_size_nm)
        level, noise = statistics["background_level"], statistics["background_noise"]
        frame_pixels = 64 * 64 - 56 * 56
        # Median of the frame: s.e. 1.2533 σ/√n (8 s.e.: resampling correlates neighbours);
        # plus the rounding of the counts to integers, once acquired and once on the grid.
        acquired_beam = sample.metadata["acquisition"]["beam_level"]
        tolerance = (8 * 1.2533 * noise / math.sqrt(frame_pixels) + 1.0 / acquired_beam
                     + 1.0 / sample.beam_level)
        assert abs(level - expected) <= tolerance, (sample.index, level, expected)
        checked += 1
    assert checked >= 30


def test_recomputing_a_sample_from_seed_and_index_gives_identical_record_bytes(realistic):
    design = build_design(TINY_REALISTIC)
    name = design.shard_name("train", 1)
    stored = list(records.iter_tfrecord(realistic / name))
    indices = design.shards["train"][1]
    for position in (0, len(indices) - 1):
        task, = writer.sample_tasks(design, [indices[position]], None)
        assert records.encode_example(records.compute_sample(task), "train") == stored[position]


def test_same_settings_give_byte_identical_shards_in_any_order(realistic, tmp_path):
    generate_dataset(tmp_path, TINY_REALISTIC, shard_indices=[1], workers=1, progress=False)
    report = generate_dataset(tmp_path, TINY_REALISTIC, shard_indices=[0], workers=1,
                              progress=False)
    assert report.complete
    assert _digests(tmp_path) == _digests(realistic)
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path, realistic))
    assert first["splits"] == second["splits"]


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_bytes(realistic, tmp_path, monkeypatch):
    generate_dataset(tmp_path, TINY_REALISTIC, shard_indices=[0], workers=1, progress=False)
    real, calls = records.compute_sample, {"n": 0}

    def dying(task):
        calls["n"] += 1
        if calls["n"] > 4:
            raise _Interrupt()
        return real(task)

    monkeypatch.setattr(writer, "compute_sample", dying)
    with pytest.raises(_Interrupt):
        generate_dataset(tmp_path, TINY_REALISTIC, workers=1, progress=False)
    monkeypatch.setattr(writer, "compute_sample", real)
    assert "train-00001-of-00002.tfrecord" not in {p.name for p in tmp_path.iterdir()}
    (tmp_path / ".train-00001-of-00002.tfrecord.tmp-99999").write_bytes(b"\x00" * 10)
    report = generate_dataset(tmp_path, TINY_REALISTIC, workers=1, progress=False)
    assert report.complete and len(report.skipped) == 3
    assert _digests(tmp_path) == _digests(realistic)
    verify_dataset(tmp_path)
    # The paper-style tiny preset may not resume into it.
    with pytest.raises(DatasetError, match="conditions"):
        generate_dataset(tmp_path, preset("tiny"), workers=1, progress=False)


def test_pipeline_and_pooled_cache_normalize_with_the_records_dark_and_beam(realistic):
    from hagg_tf.data import multi_image_dataset
    from hagg_tf.data.pooled import pool_samples
    from hagg_tf.networks.preprocessing import INVERSION_THRESHOLD, preprocess_images_numpy

    samples = {sample.index: sample for sample in _samples(realistic)}
    dataset = multi_image_dataset(realistic, "tio2_cluster_size", "evaluation", num_images=3,
                                  batch_size=1, with_info=True)
    differs_from_counts_over_electrons = 0
    for images, _, info in dataset:
        for slot, index in enumerate(info["index"].numpy()[0]):
            sample = samples[int(index)]
            shifted = sample.counts.astype(np.float32) - np.float32(sample.dark_level)
            expected = preprocess_images_numpy(shifted, np.float32(sample.beam_level),
                                               inversion_threshold=INVERSION_THRESHOLD)
            np.testing.assert_array_equal(images.numpy()[0, slot, :, :, 0], expected)
            naive = preprocess_images_numpy(sample.counts, np.float32(sample.electrons_per_pixel),
                                            inversion_threshold=INVERSION_THRESHOLD)
            differs_from_counts_over_electrons += not np.array_equal(naive, expected)
            levels = pool_samples([sample], pooling=1)["inverted"][0]  # 1×1 windows: the levels
            np.testing.assert_array_equal(levels.astype(np.float32) / 255 - 0.5, expected)
    assert differs_from_counts_over_electrons > 0


def test_cli_generates_a_shard_of_the_realistic_preset(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "generate_dataset.py"), "--preset=realistic",
         "--output=db", "--image_size=64", "--num_shards=4000", "--shard_index=0",
         "--workers=1", "--noprogress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))})
    assert result.returncode == 0, result.stderr
    assert "not complete yet" in result.stdout
    written = sorted(path.name for path in (tmp_path / "db").glob("*.tfrecord"))
    assert written == [f"{split}-00000-of-04000.tfrecord"
                       for split in ("evaluation", "train", "validation")]
    sample = next(records.read_samples(tmp_path / "db" / written[0]))
    assert sample.conditions is not None and sample.counts.shape == (64, 64)
