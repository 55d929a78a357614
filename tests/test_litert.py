"""The LiteRT runtime of the composite model: same outputs as the SavedModel, no TensorFlow."""
import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from synthetic_images import ELECTRONS_PER_PIXEL, synthetic_counts

pytest.importorskip("ai_edge_litert")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from hagg_tf import networks  # noqa: E402
from hagg_tf.estimation.litert_model import LiteRTCharacterizeModel  # noqa: E402
from hagg_tf.estimation.model import (CLUSTER_HEAD_OUTPUTS, LITERT_FILENAME,  # noqa: E402
                                      LITERT_RECORD_FILENAME, PER_IMAGE_OUTPUTS,
                                      CharacterizeModel, litert_unusable,
                                      load_characterize_model)
from hagg_tf.export.characterize import NETWORK_ORDER, export_characterize_model  # noqa: E402
from hagg_tf.export.litert import (CONVERSION_TOLERANCE, allowed_difference,  # noqa: E402
                                   output_tolerance, write_litert_model)

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = REPO / "saved_models" / "characterize"
SIZE = networks.minimum_image_size()
NU = 3


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A composite export of five small random networks with its LiteRT conversion.

    The networks share one f, as the shipped ones do (it runs once per image: a conversion of
    a third of the graph, so the fixture is quick); CNN^1's inverse-intensity input still
    takes its own pass.
    """
    keras.utils.set_random_seed(3)
    models = {name: networks.build_network(name, SIZE, num_images=NU) for name in NETWORK_ORDER}
    shared_f = networks.get_feature_extractor(models[NETWORK_ORDER[0]]).get_weights()
    for model in models.values():
        networks.get_feature_extractor(model).set_weights(shared_f)
    base = tmp_path_factory.mktemp("litert")
    version_dir = export_characterize_model(models, base, version=1, kernel_dtype="float32",
                                            pixel_size_nm=3.5, model_card={"status": "test"})
    write_litert_model(version_dir)
    return version_dir


def _compare(litert, savedmodel, counts, electrons):
    """Every output of both signatures on the two runtimes: {name: (max |Δ|, scale)}."""
    outputs = {}
    for model in (litert, savedmodel):
        per_image = model.per_image(counts, electrons)
        stacks = (np.arange(len(counts))[:, None] + np.arange(model.num_images)[None]) \
            % len(counts)
        heads = model.cluster_heads(per_image["wo3_cluster_size_features"][stacks],
                                    per_image["tio2_cluster_size_features"][stacks])
        outputs[model] = {**per_image, **heads}
    assert set(outputs[litert]) == set(PER_IMAGE_OUTPUTS) | set(CLUSTER_HEAD_OUTPUTS)
    return {key: (float(np.max(np.abs(outputs[litert][key].astype(np.float64)
                                       - outputs[savedmodel][key]))),
                  float(np.max(np.abs(outputs[savedmodel][key]))))
            for key in outputs[savedmodel]}


def test_litert_outputs_equal_the_savedmodel_on_a_tiny_export(tiny_export):
    litert, savedmodel = LiteRTCharacterizeModel(tiny_export), CharacterizeModel(tiny_export)
    counts = synthetic_counts(np.random.default_rng(5), (5,), SIZE).astype(np.float32)
    electrons = np.full(5, ELECTRONS_PER_PIXEL, np.float32)
    differences = _compare(litert, savedmodel, counts, electrons)
    for key, (difference, scale) in differences.items():
        assert difference <= allowed_difference(scale), (key, difference, scale)
    # θ̂ from the per-image outputs (LiteRT) and from serving_default (TensorFlow) agree.
    got, expected = litert.estimate(counts, electrons), savedmodel.estimate(counts, electrons)
    np.testing.assert_allclose(got.theta_raw, expected.theta_raw, atol=CONVERSION_TOLERANCE)
    assert got.theta[2:] == expected.theta[2:]
    # A batch (b, n) and a single sample (n,) give the same numbers; n may be anything ≥ 1.
    batch = litert.per_image(np.stack([counts, counts[::-1]]), np.stack([electrons] * 2))
    single = litert.per_image(counts[:2], electrons[:2])
    np.testing.assert_array_equal(batch["fractal_dimension_per_image"][1, ::-1],
                                  litert.per_image(counts, electrons)
                                  ["fractal_dimension_per_image"])
    assert single["wo3_cluster_size_features"].shape[0] == 2


def test_the_record_ties_the_conversion_to_its_savedmodel(tiny_export, tmp_path):
    record = json.loads((tiny_export / LITERT_RECORD_FILENAME).read_text())
    assert record["signatures"] == ["serving_per_image", "serving_cluster_heads"]
    assert litert_unusable(tiny_export) is None
    assert isinstance(load_characterize_model(tiny_export), LiteRTCharacterizeModel)
    assert isinstance(load_characterize_model(tiny_export, "savedmodel"), CharacterizeModel)
    # A SavedModel exported anew beside an old conversion: the conversion is stale.
    copy = tmp_path / "1"
    shutil.copytree(tiny_export, copy)
    (copy / "fingerprint.pb").write_bytes(b"another SavedModel")
    assert "stale" in litert_unusable(copy)
    assert isinstance(load_characterize_model(copy), CharacterizeModel)  # auto falls back
    with pytest.raises(ValueError, match="runtime litert: .*stale"):
        load_characterize_model(copy, "litert")
    # A .tflite changed after its record was written (here: truncated) is not run.
    truncated = tmp_path / "truncated"
    shutil.copytree(tiny_export, truncated)
    flatbuffer = (truncated / LITERT_FILENAME).read_bytes()
    (truncated / LITERT_FILENAME).write_bytes(flatbuffer[:len(flatbuffer) // 2])
    assert "changed or truncated" in litert_unusable(truncated)
    assert isinstance(load_characterize_model(truncated), CharacterizeModel)
    (copy / LITERT_FILENAME).unlink()
    with pytest.raises(ValueError, match="no LiteRT conversion"):
        LiteRTCharacterizeModel(copy)
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_characterize_model(copy, "onnx")


def test_the_litert_runtime_never_imports_tensorflow(tiny_export):
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from hagg_tf.estimation.model import load_characterize_model
        model = load_characterize_model({str(tiny_export)!r})
        counts = np.random.default_rng(0).poisson(50.0, (4, {SIZE}, {SIZE}))
        theta = model.estimate(counts, np.full(4, 100.0)).theta
        heavy = sorted(name for name in ("tensorflow", "keras", "tensorboard")
                       if name in sys.modules)
        print(type(model).__name__, heavy)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["LiteRTCharacterizeModel", "[]"]


def test_tensorflow_graph_preprocessing_equals_numpy_with_the_inversion():
    """Inside a tf.function, 1/p must be an exact division (Grappler would make it an
    approximate Reciprocal): the SavedModel, numpy and LiteRT then put every pixel on the same
    grey level."""
    from hagg_tf.networks.preprocessing import (INVERSION_THRESHOLD, preprocess_images,
                                                preprocess_images_numpy)

    counts = np.random.default_rng(0).poisson(
        np.random.default_rng(1).uniform(0, 40, (3, 128, 128))).astype(np.float32)
    electrons = np.full(3, 100.0, np.float32)
    graph = tf.function(lambda images, dose: preprocess_images(
        images, dose, inversion_threshold=INVERSION_THRESHOLD))
    got = graph(tf.constant(counts), tf.constant(electrons)).numpy()
    expected = preprocess_images_numpy(counts, electrons, inversion_threshold=INVERSION_THRESHOLD)
    # Levels are 1/255 apart; the final ·(1/255) may differ from numpy's /255 by an ulp.
    assert np.max(np.abs(got - expected)) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("sample", ["sample_a", "sample_b"])
def test_shipped_litert_conversion_equals_the_savedmodel(sample):
    """LiteRT's outputs equal the SavedModel's to 1e-5 relative to the output's size where it
    exceeds 1 — except CNN^0's features and head, to 2e-5: float32 arithmetic is not that exact
    there, TensorFlow's own two CPU kernel libraries (oneDNN and Eigen) already differ by
    0.6–0.9e-5 of the output on the same SavedModel and images (docs/learning.md, "Runtimes of
    hagg-characterize")."""
    from hagg_tf.estimation import find_image_files, load_stem_images, prepare_images
    from hagg_tf.estimation.model import resolve_version_dir

    version_dir = resolve_version_dir(SHIPPED)
    reason = litert_unusable(version_dir)
    if reason is not None:
        pytest.fail(f"the shipped conversion is unusable: {reason}")
    litert, savedmodel = LiteRTCharacterizeModel(version_dir), CharacterizeModel(version_dir)
    paths, _ = find_image_files([REPO / "examples" / sample])
    inputs, _ = load_stem_images(paths)
    prepared, _ = prepare_images(inputs, litert.image_size, litert.pixel_size_nm)
    differences = _compare(litert, savedmodel, prepared.counts, prepared.electrons_per_pixel)
    for key, (difference, scale) in differences.items():
        assert difference <= allowed_difference(scale, output_tolerance(key)), (key, difference,
                                                                                scale)
    got = litert.estimate(prepared.counts, prepared.electrons_per_pixel)
    expected = savedmodel.estimate(prepared.counts, prepared.electrons_per_pixel)
    assert got.theta[2:] == expected.theta[2:]


def test_the_space_to_depth_stem_converts_to_litert(tmp_path):
    # Its reshape and 5-D transpose must survive the conversion with the same numbers.
    keras.utils.set_random_seed(4)
    size = networks.minimum_image_size("fine_s2d")
    models = {name: networks.build_network(name, size, num_images=NU, architecture="fine_s2d")
              for name in NETWORK_ORDER}
    shared_f = networks.get_feature_extractor(models[NETWORK_ORDER[0]]).get_weights()
    for model in models.values():
        networks.get_feature_extractor(model).set_weights(shared_f)
    version_dir = export_characterize_model(models, tmp_path, version=1, kernel_dtype="float32",
                                            pixel_size_nm=3.5, model_card={"status": "test"})
    write_litert_model(version_dir)
    litert, savedmodel = LiteRTCharacterizeModel(version_dir), CharacterizeModel(version_dir)
    counts = synthetic_counts(np.random.default_rng(6), (4,), size).astype(np.float32)
    electrons = np.full(4, ELECTRONS_PER_PIXEL, np.float32)
    for key, (difference, scale) in _compare(litert, savedmodel, counts, electrons).items():
        assert difference <= allowed_difference(scale), (key, difference, scale)
