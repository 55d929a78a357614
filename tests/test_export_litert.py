"""hagg-export-models writes the composite's LiteRT conversion beside it (--litert)."""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_export_models_asked_for_litert_without_ai_edge_litert_fails_in_one_line(tmp_path):
    """--litert without ai-edge-litert: one error line and exit status 2, before TensorFlow."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["ai_edge_litert"] = None   # as if not installed: find_spec gives None
        sys.argv = ["hagg-export-models", "--from_composite={REPO / 'saved_models'}",
                    "--output={tmp_path / 'out'}", "--litert"]
        from hagg_tf.cli.export_models import run
        try:
            run()
        finally:
            print("tensorflow" in sys.modules, file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: --litert needs ai-edge-litert"), lines
    assert lines[1] == "False"  # failed before importing TensorFlow
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # two tiny exports and a conversion: ~40 s on 2 cores
def test_export_from_composite_writes_a_litert_conversion_equal_to_its_savedmodel(tmp_path):
    pytest.importorskip("ai_edge_litert")
    keras = pytest.importorskip("keras")
    from hagg_tf import networks
    from hagg_tf.estimation.litert_model import LiteRTCharacterizeModel
    from hagg_tf.estimation.model import (LITERT_FILENAME, CharacterizeModel, litert_unusable,
                                          load_characterize_model)
    from hagg_tf.export.characterize import NETWORK_ORDER, export_characterize_model
    from hagg_tf.export.from_training import export_from_composite

    keras.utils.set_random_seed(5)
    size = networks.minimum_image_size()
    models = {name: networks.build_network(name, size, num_images=3) for name in NETWORK_ORDER}
    source = export_characterize_model(models, tmp_path / "source", version=1,
                                       kernel_dtype="float32", pixel_size_nm=3.5,
                                       model_card={"status": "test"})
    assert not (source / LITERT_FILENAME).exists()
    written = export_from_composite(source, tmp_path / "out", version=2, composite=True,
                                    per_network=False, kernel_dtype="float32", litert=True)
    version_dir = written["composite"]
    assert written["litert"] == version_dir / LITERT_FILENAME
    assert litert_unusable(version_dir) is None  # the record names this very SavedModel
    model = load_characterize_model(version_dir)  # auto: the conversion is taken
    assert isinstance(model, LiteRTCharacterizeModel)
    counts = np.random.default_rng(0).poisson(30.0, (4, size, size)).astype(np.float32)
    electrons = np.full(4, 100.0, np.float32)
    got = model.per_image(counts, electrons)
    expected = CharacterizeModel(version_dir).per_image(counts, electrons)
    for key, value in expected.items():
        scale = max(1.0, float(np.max(np.abs(value))))
        assert np.max(np.abs(got[key] - value)) <= 2e-5 * scale, key
    # Without the flag, no conversion is written.
    plain = export_from_composite(source, tmp_path / "plain", version=1, composite=True,
                                  per_network=False, kernel_dtype="float32")
    assert "litert" not in plain and not (plain["composite"] / LITERT_FILENAME).exists()
