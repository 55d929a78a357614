"""The database design (paper Sec. 2.3): θ configurations, the T/E split rule, shards."""

import sys

import numpy as np
import pytest

from hagg_tf.data import design
from hagg_tf.model.parameters import TABLE2_FRACTAL_DIMENSIONS


@pytest.fixture(scope="module")
def paper():
    return design.build_design(design.preset("paper"))


def test_paper_design_has_the_papers_sizes(paper):
    assert paper.num_thetas == 648 and paper.num_samples == 32_400
    train, validation, evaluation = (paper.split_indices(name) for name in design.SPLITS)
    assert len(train) + len(validation) == 19_440  # T
    assert len(evaluation) == 12_960  # E
    assert len(validation) == 1_950  # all 30 T-draws of 65 whole configurations


def test_paper_split_puts_every_theta_at_least_20_times_in_T_and_in_E(paper):
    """The rule of Sec. 2.3, for θ = the full configuration (θ_Df, θ_ρ, θ_0, θ_1)."""
    counts = {name: paper.counts_per_theta(name) for name in design.SPLITS}
    training = counts["train"] + counts["validation"]
    assert training.min() >= 20 and counts["evaluation"].min() >= 20
    assert design.check_split_rule(counts, 20) == []
    # Exactly 30 / 20 per θ (the paper's totals); validation holds whole configurations, so
    # that each of its θ gives ⌊30 / 12⌋ ν-image validation samples.
    assert np.all(training == 30) and np.all(counts["evaluation"] == 20)
    assert set(np.unique(counts["validation"])) == {0, 30}
    assert np.count_nonzero(counts["validation"]) == 65
    assert design.expected_multi_image_samples(counts["validation"], 12) == 130
    # So every single parameter value also occurs far more than 20 times in each part.
    for column in range(4):
        for split_counts in (training, counts["evaluation"]):
            per_value = {}
            for value, count in zip(paper.thetas[:, column], split_counts):
                per_value[value] = per_value.get(value, 0) + count
            assert min(per_value.values()) >= 20


def test_check_split_rule_reports_violations():
    counts = {"train": np.array([25, 10]), "validation": np.array([3, 3]),
              "evaluation": np.array([20, 25])}
    problems = design.check_split_rule(counts, 20)
    assert len(problems) == 1 and "theta_id 1" in problems[0] and "T" in problems[0]
    counts["evaluation"] = np.array([19, 25])
    assert len(design.check_split_rule(counts, 20)) == 2


def test_paper_thetas_are_two_distinct_table2_fractal_dimensions_per_triple(paper):
    triples = design.all_triples()
    assert len(triples) == 324
    for number, triple in enumerate(triples):
        rows = paper.thetas[2 * number:2 * number + 2]
        assert np.all(rows[:, 1:] == triple)
        assert rows[0, 0] != rows[1, 0]
        assert set(rows[:, 0]) <= set(TABLE2_FRACTAL_DIMENSIONS)
    # Drawn at random: every Table 2 value is used, none dominates.
    values, counts = np.unique(paper.thetas[:, 0], return_counts=True)
    assert len(values) == 11 and counts.max() < 3 * counts.min()


def test_validation_and_evaluation_are_disjoint_and_cover_everything(paper):
    sets = [set(paper.split_indices(name).tolist()) for name in design.SPLITS]
    assert sum(len(s) for s in sets) == paper.num_samples
    assert set.union(*sets) == set(range(paper.num_samples))
    # theta_id of sample i is i // 50 (the documented index layout)
    assert np.array_equal(paper.sample_theta, np.arange(paper.num_samples) // 50)


def test_shards_partition_each_split_and_are_random_samples(paper):
    for split in design.SPLITS:
        shards = paper.shards[split]
        assert len(shards) == 32
        joined = np.concatenate(shards)
        assert np.array_equal(np.sort(joined), paper.split_indices(split))
        sizes = [len(shard) for shard in shards]
        assert max(sizes) - min(sizes) <= 1
    # Record order inside a shard is not index order (θ would come in grid order).
    first = paper.shards["train"][0]
    assert not np.all(np.diff(first) > 0)
    # A train shard holds a broad mix of θ.
    assert len(np.unique(paper.sample_theta[first])) > 300


def test_design_is_a_function_of_the_settings_alone():
    config = design.preset("paper", seed=5)
    design.build_design.cache_clear()
    first = design.build_design(config)
    design.build_design.cache_clear()
    second = design.build_design(design.preset("paper", seed=5))
    assert np.array_equal(first.thetas, second.thetas)
    assert np.array_equal(first.sample_split, second.sample_split)
    for split in design.SPLITS:
        for a, b in zip(first.shards[split], second.shards[split]):
            assert np.array_equal(a, b)
    other = design.build_design(design.preset("paper", seed=6))
    assert not np.array_equal(first.thetas, other.thetas)
    # More shards regroup the same split.
    resharded = design.build_design(config.replace(num_shards=7))
    assert np.array_equal(resharded.sample_split, first.sample_split)


def test_tiny_preset_follows_its_own_rule():
    tiny = design.build_design(design.preset("tiny"))
    counts = {name: tiny.counts_per_theta(name) for name in design.SPLITS}
    assert design.check_split_rule(counts, tiny.config.min_per_theta) == []
    assert tiny.num_samples == 48 and tiny.config.image_size == 64
    # Same field of view as the paper (614.4 nm) at any image size.
    assert tiny.config.effective_pixel_size_nm == pytest.approx(9.6)


@pytest.mark.parametrize("changes, message", [
    (dict(evaluation_per_theta=19), "fewer than min_per_theta=20"),
    (dict(samples_per_theta=39), "T gets 19"),
    (dict(samples_per_theta=30, evaluation_per_theta=20, validation_per_theta=10),
     "leaves no training draws"),
    (dict(fractal_dimensions_per_triple=12), "fractal_dimensions_per_triple"),
    (dict(validation_thetas=648), "leaves none of the 648 configurations"),
    (dict(num_shards=0), "num_shards"),
    (dict(triples=((1.5, 1, 1),)), "mixing_ratio"),
    (dict(min_size=50, max_size=40), "size bounds"),
])
def test_invalid_settings_are_rejected_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        design.preset("paper", **changes)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        design.preset("huge")


def test_importing_hagg_tf_data_does_not_import_tensorflow():
    import subprocess
    code = ("import sys, hagg_tf, hagg_tf.data; hagg_tf.data.build_design("
            "hagg_tf.data.preset('tiny')); print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
