"""Shared pytest fixtures of the hagg_tf test suite."""


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_database(tmp_path_factory):
    """Builds the ``tiny`` preset database (default HAADF tables) once per image size.

    Returns:
        A function ``image_size -> database directory``; tests must not modify the database.
    """
    built = {}

    def build(image_size):
        if image_size not in built:
            from hagg_tf import data

            output = tmp_path_factory.mktemp(f"tiny{image_size}") / "db"
            report = data.generate_dataset(output, data.preset("tiny", image_size=image_size),
                                           workers=1, progress=False)
            assert report.complete
            built[image_size] = output
        return built[image_size]

    return build


@pytest.fixture(scope="session")
def tiny_compact_cache(tiny_database, tmp_path_factory):
    """(database, pooled cache) of the tiny preset at the compact architecture's smallest size.

    Tests must not modify either.
    """
    from hagg_tf import networks
    from hagg_tf.data.pooled import build_pooled_cache

    database = tiny_database(networks.minimum_image_size("compact"))
    pooling = networks.get_architecture("compact").input_pooling
    cache = build_pooled_cache(database, tmp_path_factory.mktemp("tiny_cache") / "pool",
                               pooling, workers=1, progress=False)
    return database, cache


@pytest.fixture(scope="session")
def tiny_fine_cache(tiny_database, tmp_path_factory):
    """(database, pooled cache) of the tiny preset at the default backbone architecture's pooling
    and smallest image size (the shared backbone's tests). Tests must not modify either."""
    from hagg_tf import networks
    from hagg_tf.data.pooled import build_pooled_cache
    from hagg_tf.training.multitask import DEFAULT_BACKBONE_ARCHITECTURE

    database = tiny_database(networks.minimum_image_size(DEFAULT_BACKBONE_ARCHITECTURE))
    pooling = networks.get_architecture(DEFAULT_BACKBONE_ARCHITECTURE).input_pooling
    cache = build_pooled_cache(database, tmp_path_factory.mktemp("tiny_fine_cache") / "pool",
                               pooling, workers=1, progress=False)
    return database, cache


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def one_error_line():
    """Checks a finished CLI run (``subprocess.CompletedProcess``) failed with exit status 2 and
    one ``error:`` line on stderr, no traceback; returns that line."""
    return _one_error_line


def made_up_estimate(count):
    """θ̂ from made-up network outputs for ``count`` images, near θ = (1.8, 0.5, 3, 2): per-image
    D̂_f in [1.7, 1.9] and ρ̂ in [0.4, 0.6] (seeded), every image heterogeneous, raw cluster
    sizes 3.2 and 1.9. For results built without TensorFlow (here and in
    test_characterize_output)."""
    import numpy as np

    from hagg_tf.estimation import estimate_theta

    rng = np.random.default_rng(1)
    return estimate_theta(
        fractal_dimension=rng.uniform(1.7, 1.9, count),
        mixing_ratio_regressor=rng.uniform(0.4, 0.6, count),
        homogeneous_probability=np.full(count, 0.1),
        wo3_cluster_size_per_subset=[3.2], tio2_cluster_size_per_subset=[1.9])


@pytest.fixture(scope="session")
def example_characterization():
    """A ``CharacterizationResult`` of ``examples/sample_a`` built without TensorFlow: the
    shipped images read and prepared as ``characterize`` does, the shipped model's metadata and
    model card, 12 real digital shadows, and made-up network outputs near the images' θ.

    Tests must not modify it (``copy.deepcopy`` it first).
    """
    import pathlib

    from hagg_tf.estimation import (CharacterizationResult, find_image_files, find_model,
                                    load_stem_images, prepare_images, shadow_summary)
    from hagg_tf.estimation.characterize import _simulated_theta, describe_inputs
    from hagg_tf.estimation.shadows import collect_shadows

    repo = pathlib.Path(__file__).resolve().parents[1]
    version_dir, metadata = find_model(repo / "saved_models" / "characterize")
    paths, notes = find_image_files([repo / "examples" / "sample_a"])
    inputs, warnings = load_stem_images(paths)
    prepared, prepare_warnings = prepare_images(inputs, metadata["image_size"],
                                                metadata["pixel_size_nm"])
    estimate = made_up_estimate(len(inputs))
    params = estimate.shadow_parameters()
    aggregates, descriptors, restarts = collect_shadows(params, 12, seed=0, workers=1)
    return CharacterizationResult(
        estimate=estimate, shadow_parameters=params, shadows=aggregates,
        descriptors=descriptors, summary=shadow_summary(descriptors),
        images=describe_inputs(inputs, prepared),
        prepared=prepared, warnings=warnings + prepare_warnings,
        notes=notes + prepared.notes,
        model={"version_dir": version_dir, "metadata": metadata,
               "model_card": metadata.get("model_card") or {}},
        simulated_theta=_simulated_theta(inputs), seed=0, timings={"shadows": 0.1},
        shadow_count=len(descriptors), shadow_restarts=restarts)


class FakeCharacterizeModel:
    """Contract A of the composite model (``per_image``, ``cluster_heads``, ``estimate``) in
    numpy, without TensorFlow, for the bootstrap and batch tests.

    Per image: CNN^Df = 1.5 + the share of pixels above 1e-3 of the beam, CNN^ρ_reg = 50 × the
    mean intensity (clipped to [0, 1]), CNN^ρ_class = 0.1; features f(I) = (covered share, mean
    intensity, slot-free constant 1) — or the fixed ``outputs`` given. Heads g: a weighted sum of
    the stack's features with weights that depend on the slot (as a concatenation + dense layer
    does), so the order of a stack matters. ``estimate`` is an independent loop over the cyclic
    ν-subsets, like ``serving_default``.
    """

    has_per_image_outputs = True

    def __init__(self, folder, *, num_images=3, image_size=64, pixel_size_nm=9.6,
                 outputs=None):
        import pathlib

        import numpy as np

        self.version_dir = pathlib.Path(folder)
        self.metadata = {"image_size": image_size, "num_images": num_images,
                         "pixel_size_nm": pixel_size_nm, "version": 1,
                         "model_card": {"status": "test"}}
        self.num_images, self.image_size, self.pixel_size_nm = num_images, image_size, \
            pixel_size_nm
        self.model_card = {"status": "test"}
        self.fixed_outputs = outputs
        self.per_image_calls = self.head_calls = 0
        self._slot_weights = 1.0 + 0.1 * np.arange(num_images)

    def per_image(self, counts, electrons_per_pixel):
        import numpy as np

        self.per_image_calls += 1
        if self.fixed_outputs is not None:
            return {key: np.asarray(value, np.float32)
                    for key, value in self.fixed_outputs.items()}
        counts = np.asarray(counts, np.float64)
        intensity = counts / np.asarray(electrons_per_pixel, np.float64).reshape(-1, 1, 1)
        covered = (intensity > 1e-3).mean(axis=(1, 2))
        mean = intensity.mean(axis=(1, 2))
        features = np.stack([covered, mean, np.ones_like(mean)], axis=1).astype(np.float32)
        return {"fractal_dimension_per_image": (1.5 + covered).astype(np.float32),
                "mixing_ratio_regressor_per_image": np.clip(50 * mean, 0, 1).astype(np.float32),
                "homogeneous_probability_per_image": np.full(len(mean), 0.1, np.float32),
                "wo3_cluster_size_features": features,
                "tio2_cluster_size_features": features[:, ::-1].copy()}

    def cluster_heads(self, wo3_features, tio2_features):
        import numpy as np

        self.head_calls += 1
        wo3 = np.asarray(wo3_features, np.float32)
        tio2 = np.asarray(tio2_features, np.float32)
        slot = self._slot_weights[np.newaxis, :, np.newaxis]
        return {"wo3_cluster_size_raw": (20.0 * (wo3 * slot).sum(axis=(1, 2))
                                         / wo3.shape[1]).astype(np.float32),
                "tio2_cluster_size_raw": (1.0 + 10.0 * (tio2 * slot)[..., :2].sum(axis=(1, 2))
                                          / tio2.shape[1]).astype(np.float32)}

    def estimate(self, counts, electrons_per_pixel):
        import numpy as np

        from hagg_tf.estimation.estimators import cyclic_subsets, estimate_theta

        outputs = self.per_image(counts, electrons_per_pixel)
        count = len(outputs["fractal_dimension_per_image"])
        wo3, tio2 = [], []
        for subset in cyclic_subsets(count, self.num_images):  # one stack at a time
            heads = self.cluster_heads(outputs["wo3_cluster_size_features"][subset][None],
                                       outputs["tio2_cluster_size_features"][subset][None])
            wo3.append(float(heads["wo3_cluster_size_raw"][0]))
            tio2.append(float(heads["tio2_cluster_size_raw"][0]))
        return estimate_theta(outputs["fractal_dimension_per_image"],
                              outputs["mixing_ratio_regressor_per_image"],
                              outputs["homogeneous_probability_per_image"],
                              np.array(wo3), np.array(tio2))


@pytest.fixture
def fake_characterize_model(tmp_path):
    """A factory of :class:`FakeCharacterizeModel` (keyword arguments as its constructor's),
    each with its own empty folder as ``version_dir`` (no training domain there)."""
    made = []

    def make(**kwargs):
        folder = tmp_path / f"fake-model-{len(made)}"
        folder.mkdir()
        made.append(FakeCharacterizeModel(folder, **kwargs))
        return made[-1]

    return make


def write_synthetic_tables(path):
    """Synthetic HAADF tables (WO3 ten times brighter than TiO2, linear in thickness) → path."""
    import numpy as np

    from hagg_tf.model.parameters import TIO2, WO3
    from hagg_tf.stem import HaadfTable, HaadfTables

    thickness = np.linspace(0.0, 80.0, 81)
    tables = HaadfTables([HaadfTable("WO3", WO3, "gamma", "a", thickness, 0.004 * thickness),
                          HaadfTable("TiO2", TIO2, "rutile", "a", thickness, 0.0004 * thickness)])
    path.write_text(tables.to_text())
    return path


@pytest.fixture(scope="session")
def tiny_synthetic_database(tmp_path_factory):
    """The ``tiny`` preset at the Table 3 networks' smallest size (156 px), rendered with
    :func:`write_synthetic_tables`; built once per session. Tests must not modify it."""
    from hagg_tf import data
    from hagg_tf.networks import minimum_image_size

    root = tmp_path_factory.mktemp("tiny_synthetic")
    tables = write_synthetic_tables(root / "tables.csv")
    config = data.preset("tiny", image_size=minimum_image_size())
    report = data.generate_dataset(root / "db", config, workers=1, tables_path=str(tables),
                                   progress=False)
    assert report.complete
    return root / "db"
