"""The scripting API: ``import hagg_tf.models`` works, and TensorFlow stays quiet unless asked."""
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("tensorflow")


def run_python(code, env_update=None, extra_path=None, unset=("TF_CPP_MIN_LOG_LEVEL",
                                                               "HAGG_TF_VERBOSE")):
    """Runs ``code`` in a fresh interpreter outside the repository; returns the finished process."""
    env = {key: value for key, value in os.environ.items() if key not in unset}
    env.update(env_update or {})
    path = [str(extra_path)] if extra_path else []
    env["PYTHONPATH"] = os.pathsep.join(path + [str(REPO)] + (
        [env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, cwd=REPO.parent, env=env, timeout=300)


def test_hagg_tf_models_imports_builds_every_network_and_prints_nothing_on_stderr():
    result = run_python("""
        import sys
        import numpy as np
        import hagg_tf.models
        import hagg_tf
        from hagg_tf import models, networks

        assert hagg_tf.models is sys.modules["hagg_tf.models"] is models
        assert models.__file__.rsplit("/", 1)[0] == hagg_tf.__file__.rsplit("/", 1)[0]
        assert sorted(models.__all__) == sorted(networks.__all__)
        for name in models.__all__:
            assert getattr(models, name) is getattr(networks, name), name
        size = models.minimum_image_size()
        for name in sorted(models.NETWORK_SPECS):
            model = models.compile_network(models.build_network(name, size, num_images=2))
            multi = models.network_spec(name).multi_image
            shape = (1, 2, size, size, 1) if multi else (1, size, size, 1)
            print(name, tuple(model(np.zeros(shape, np.float32), training=False).shape))
        from hagg_tf import data
        data.single_image_dataset  # the pipelines load TensorFlow lazily, quietly as well
        import hagg_tf.export  # noqa: F401
    """)
    assert result.returncode == 0, result.stderr
    built = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert sorted(built) == ["fractal_dimension", "mixing_ratio_classifier",
                             "mixing_ratio_regressor", "tio2_cluster_size", "wo3_cluster_size"]
    assert all(shape == "(1, 1)" for shape in built.values()), built
    # No oneDNN / cudart / cuInit / absl lines: the Python API is as quiet as the tools.
    assert result.stderr == "", result.stderr


FAKE_TENSORFLOW = """
import os
os.write(2, b"I0000 cudart_stub.cc:31] chatter of the C++ runtime\\n")
LEVEL_AT_IMPORT = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
"""


@pytest.fixture
def fake_tensorflow(tmp_path):
    """A stand-in ``tensorflow`` and ``keras`` that write to file descriptor 2 on import."""
    (tmp_path / "tensorflow.py").write_text(FAKE_TENSORFLOW)
    (tmp_path / "keras.py").write_text("import os\nos.write(2, b'keras chatter\\n')\n")
    return tmp_path


HELPER_CALL = """
    import os, sys
    import hagg_tf.tensorflow_import
    from hagg_tf.tensorflow_import import import_tensorflow_quietly
    print(hagg_tf.tensorflow_import.__file__)
    tf = import_tensorflow_quietly()
    print(tf.LEVEL_AT_IMPORT, os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
    print("after the import", file=sys.stderr)
"""


def levels(result):
    """TF_CPP_MIN_LOG_LEVEL when TensorFlow was imported and after, from this checkout's helper."""
    assert result.returncode == 0, result.stderr
    helper, levels = result.stdout.splitlines()
    assert pathlib.Path(helper) == REPO / "hagg_tf" / "tensorflow_import.py"
    return levels.split()


def test_quiet_import_mutes_tensorflow_by_default(fake_tensorflow):
    result = run_python(HELPER_CALL, extra_path=fake_tensorflow)
    assert levels(result) == ["3", "3"]
    assert result.stderr == "after the import\n"  # muted for the import only


def test_quiet_import_keeps_a_log_level_the_user_set(fake_tensorflow):
    result = run_python(HELPER_CALL, {"TF_CPP_MIN_LOG_LEVEL": "1"}, extra_path=fake_tensorflow)
    assert levels(result) == ["1", "1"]
    assert result.stderr == "after the import\n"


def test_hagg_tf_verbose_shows_tensorflow_start_up_output(fake_tensorflow):
    result = run_python(HELPER_CALL, {"HAGG_TF_VERBOSE": "1"}, extra_path=fake_tensorflow)
    assert levels(result) == ["None", "None"]  # TF_CPP_MIN_LOG_LEVEL left unset
    assert "chatter of the C++ runtime" in result.stderr and "keras chatter" in result.stderr


def test_quiet_import_still_reports_a_failing_import(tmp_path):
    (tmp_path / "tensorflow.py").write_text("raise ImportError('libcudart.so.12: broken')\n")
    result = run_python(HELPER_CALL, extra_path=tmp_path)
    assert result.returncode == 1
    assert pathlib.Path(result.stdout.strip()) == REPO / "hagg_tf" / "tensorflow_import.py"
    assert "ImportError: libcudart.so.12: broken" in result.stderr  # stderr restored for it


def test_readme_uses_one_importable_name_for_the_network_builders():
    readme = (REPO / "README.md").read_text()
    assert "hagg_tf.networks" not in readme and "import networks" not in readme
    import hagg_tf.models

    used = set(re.findall(r"hagg_tf\.models\.(\w+)", readme))
    assert used, "the README's Python API shows hagg_tf.models"
    assert used <= set(hagg_tf.models.__all__), used - set(hagg_tf.models.__all__)
