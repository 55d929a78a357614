"""The shipped networks install with the package; a missing model says how to give one."""
import configparser
import fnmatch
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from setuptools import find_packages

from hagg_tf.estimation.model import CHARACTERIZE_MODEL_NAME, MODELS_ENVIRONMENT_VARIABLE, find_model

REPO = pathlib.Path(__file__).resolve().parents[1]
#: The design card's top-level folder of the shipped networks (checked against the package's
#: SHIPPED_MODELS_DIRNAME and setup.cfg below).
SHIPPED_MODELS_DIRNAME = "saved_models"
SHIPPED = REPO / SHIPPED_MODELS_DIRNAME
#: What a wheel is built from (setup.cfg's package_dir maps saved_models/ into hagg_tf/).
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "hagg_tf", SHIPPED_MODELS_DIRNAME)
HINTS = ("--models", f"${MODELS_ENVIRONMENT_VARIABLE}")


def setup_options():
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return config


def listed(value):
    return [line.strip() for line in value.splitlines() if line.strip()]


def shipped_files():
    """Every file of the shipped exports, relative to saved_models/ (placeholders excepted)."""
    return sorted(path.relative_to(SHIPPED).as_posix() for path in SHIPPED.rglob("*")
                  if path.is_file() and path.name != ".gitkeep")


def copy_package(target):
    """hagg_tf's sources copied to ``target/hagg_tf``, laid out as an installed wheel has them."""
    shutil.copytree(REPO / "hagg_tf", target / "hagg_tf",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target / "hagg_tf"


def run_outside(command, pythonpath, cwd, extra_env=None):
    """Runs ``command`` with only ``pythonpath`` ahead of the venv (no repository on the path)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", MODELS_ENVIRONMENT_VARIABLE)}
    env["PYTHONPATH"] = str(pythonpath)
    env.update(extra_env or {})
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


FIND_DEFAULT = """
import hagg_tf
from hagg_tf.estimation.model import find_model
print(hagg_tf.__file__)
try:
    print(find_model()[0])
except FileNotFoundError as error:
    print("error:", error)
"""


def test_setup_cfg_lists_every_package_and_maps_the_shipped_models_into_hagg_tf():
    options = setup_options()["options"]
    found = find_packages(str(REPO), include=["hagg_tf", "hagg_tf.*"])
    assert sorted(listed(options["packages"])) == sorted(found + ["hagg_tf.saved_models"])
    mapping = dict(line.replace(" ", "").split("=") for line in listed(options["package_dir"]))
    assert mapping == {"hagg_tf.saved_models": SHIPPED_MODELS_DIRNAME}
    from hagg_tf.estimation import model

    assert model.SHIPPED_MODELS_DIRNAME == SHIPPED_MODELS_DIRNAME


@pytest.mark.skipif(not (SHIPPED / CHARACTERIZE_MODEL_NAME).is_dir(), reason="no shipped models")
def test_package_data_carries_every_file_of_the_shipped_exports():
    patterns = listed(setup_options()["options.package_data"]["hagg_tf.saved_models"])
    files = shipped_files()
    assert any(name.endswith("/saved_model.pb") for name in files)
    missed = [name for name in files
              if not any(fnmatch.fnmatchcase(name, pattern) and
                         name.count("/") == pattern.count("/") for pattern in patterns)]
    assert missed == [], f"setup.cfg's package data leaves out {missed}"


@pytest.mark.skipif(not (SHIPPED / CHARACTERIZE_MODEL_NAME).is_dir(), reason="no shipped models")
def test_find_model_resolves_the_shipped_model_in_a_checkout_and_in_an_install(tmp_path,
                                                                                monkeypatch):
    monkeypatch.delenv(MODELS_ENVIRONMENT_VARIABLE, raising=False)
    from hagg_tf.estimation.model import shipped_models_dir

    assert shipped_models_dir() == SHIPPED  # this checkout (editable install)
    version_dir, metadata = find_model()
    assert version_dir.parent == SHIPPED / CHARACTERIZE_MODEL_NAME
    assert (version_dir / "saved_model.pb").is_file() and int(metadata["num_images"]) >= 1

    # A wheel puts saved_models/ inside the package; nothing lies next to it in site-packages.
    site = tmp_path / "site-packages"
    package = copy_package(site)
    (package / SHIPPED_MODELS_DIRNAME).symlink_to(SHIPPED, target_is_directory=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_outside([sys.executable, "-c", FIND_DEFAULT], site, elsewhere)
    assert result.returncode == 0, result.stderr
    imported, found = result.stdout.splitlines()
    assert pathlib.Path(imported) == package / "__init__.py"
    assert pathlib.Path(found).parent == package / SHIPPED_MODELS_DIRNAME / CHARACTERIZE_MODEL_NAME


def test_a_missing_model_names_the_models_flag_and_the_environment_variable(tmp_path,
                                                                            monkeypatch):
    monkeypatch.delenv(MODELS_ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(FileNotFoundError) as given:
        find_model(tmp_path)
    monkeypatch.setenv(MODELS_ENVIRONMENT_VARIABLE, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as from_environment:
        find_model()
    for message in (str(given.value), str(from_environment.value)):
        assert all(hint in message for hint in HINTS), message
    assert str(tmp_path / "nowhere") in str(from_environment.value)

    # An installation without its models names where they should be, and both ways out.
    site = tmp_path / "site-packages"
    package = copy_package(site)
    result = run_outside([sys.executable, "-c", FIND_DEFAULT], site, tmp_path)
    assert result.returncode == 0, result.stderr
    message = result.stdout.splitlines()[1]
    assert message.startswith("error: no characterize SavedModel at "
                              f"{package / SHIPPED_MODELS_DIRNAME} ")
    assert "missing from this installation" in message
    assert all(hint in message for hint in HINTS), message


def test_hagg_characterize_without_models_gives_one_error_line_with_both_hints(tmp_path):
    result = run_outside([sys.executable, str(REPO / "tools" / "characterize.py"),
                          str(REPO / "examples" / "sample_a"), f"--models={tmp_path}",
                          f"--output={tmp_path / 'out'}"], REPO, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no characterize SavedModel"), lines
    assert all(lines[0].count(hint) == 1 for hint in HINTS), lines[0]


def test_every_saved_models_path_the_docs_name_exists():
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
                 *sorted((REPO / "examples").glob("*.md")), SHIPPED / "README.md"]
    mention = re.compile(r"(?<![\w/.-])" + SHIPPED_MODELS_DIRNAME + r"/[\w./-]*[\w/]")
    stale = [f"{document.relative_to(REPO)}: {path}" for document in documents
             if document.is_file()
             for path in mention.findall(document.read_text())
             if not (REPO / path).exists()]
    assert stale == []


@pytest.mark.slow
@pytest.mark.skipif(not (SHIPPED / CHARACTERIZE_MODEL_NAME).is_dir(), reason="no shipped models")
def test_wheel_carries_the_shipped_models_and_the_main_job_runs_from_another_directory(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves no build/ in the checkout
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--no-index", "-w", str(tmp_path / "dist")],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("hagg_tf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hagg_tf/saved_models/{name}" for name in shipped_files()} <= names

    site = tmp_path / "site-packages"
    installed = subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target",
                                str(site), str(wheel)], capture_output=True, text=True,
                               timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # The README's main job, from a directory that is not the checkout.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(REPO / "examples" / "sample_a", elsewhere / "sample_a")
    result = run_outside([str(site / "bin" / "hagg-characterize"), "sample_a", "--shadows=4",
                          "--nofigure"], site, elsewhere)
    assert result.returncode == 0, result.stdout + result.stderr
    # Only the tool's own warnings (the shipped model card's), no native log or traceback.
    noise = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert noise == [], result.stderr
    report = json.loads((elsewhere / "work" / "characterize" / "sample_a" / "report.json")
                        .read_text())
    models = pathlib.Path(report["model"]["path"])
    assert models.parent == site / "hagg_tf" / SHIPPED_MODELS_DIRNAME / CHARACTERIZE_MODEL_NAME
    assert 1 < report["theta_hat"]["fractal_dimension"] < 3
