"""Many samples in one run (hagg_tf.estimation.batch, hagg-characterize FOLDER FOLDER ... and
--samples_from): one sample per folder, the summary table, failures that do not stop the run,
resume, distinct names."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from hagg_tf.estimation import InputError
from hagg_tf.estimation import batch

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "characterize.py"
EXAMPLES = REPO / "examples"
# Fixed shadow particle sizes: the size estimate from the images is not what is tested here.
FAST = {"shadows": 3, "resamples": 20, "workers": 1, "radius_mean_nm": 10.0,
        "radius_sd_nm": 2.0, "particles": (20, 40)}


def run_tool(*args, timeout=300):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The shipped samples a and b, a copy of a with one unreadable image, and a folder named
    like a elsewhere (a copy of b)."""
    root = tmp_path_factory.mktemp("samples")
    broken = root / "broken"
    shutil.copytree(EXAMPLES / "sample_a", broken)
    (broken / "image-03.png").write_bytes(b"not a png")
    twin = root / "elsewhere" / "sample_a"
    shutil.copytree(EXAMPLES / "sample_b", twin)
    return {"a": EXAMPLES / "sample_a", "b": EXAMPLES / "sample_b", "broken": broken,
            "twin": twin}


def _fake(make):
    return make(num_images=12, image_size=512, pixel_size_nm=1.2)


# -------------------------------------------------------------------------- the sample list

def test_a_sample_list_gives_folders_relative_to_it_and_per_sample_settings(tmp_path):
    (tmp_path / "x").mkdir()
    listing = tmp_path / "lists" / "run.csv"
    listing.parent.mkdir()
    listing.write_text("\ufefffolder,name,pixel_size_nm,dose,\n"   # a spreadsheet's BOM, a
                       "../x,,,,\n"                                  # trailing empty column
                       "\n"
                       f"{tmp_path / 'x'},first,1.5,120,\n"
                       "../x,x,,,\n", encoding="utf-8")
    specs = batch.read_sample_list(listing)
    assert [spec.name for spec in specs] == ["x", "first", "x-2"]
    assert all(spec.folder.resolve() == (tmp_path / "x").resolve() for spec in specs)
    assert (specs[1].pixel_size_nm, specs[1].dose, specs[1].electrons_per_pixel) == \
        (1.5, 120.0, None)
    assert specs[0].pixel_size_nm is None


@pytest.mark.parametrize("text, message", [
    ("path\nx\n", "'folder' column"),
    ("folder,gain\nx,2\n", "unknown column(s) gain"),
    ("folder,dose\nx,lots\n", "line 2: dose must be a number"),
    ("folder,dose\nx,-3\n", "line 2: dose must be a finite number > 0"),
    ("folder,name\nx,../up\n", "is not a plain folder name"),
    ("folder\nx,y\n", "more cells than columns"),
    ("folder\n\n", "names no samples"),
])
def test_a_bad_sample_list_names_the_file_and_line(tmp_path, text, message):
    listing = tmp_path / "list.csv"
    listing.write_text(text)
    with pytest.raises(InputError, match=str(listing)) as error:
        batch.read_sample_list(listing)
    assert message in str(error.value)


def test_folders_of_the_same_name_get_distinct_outputs_in_the_order_given(tmp_path):
    specs = batch.samples_from_folders([tmp_path / "p" / "a", tmp_path / "q" / "A/",
                                        tmp_path / "r" / "a", tmp_path / "b"])
    assert [spec.name for spec in specs] == ["a", "A-2", "a-3", "b"]
    assert batch.unique_names(["summary.csv"]) == ["summary.csv-2"]
    assert batch.default_batch_output(None, ["samples/a/", "samples/b"]).parts[-1] == "samples"
    assert batch.default_batch_output("lists/run7.csv", []).parts[-1] == "run7"


# ---------------------------------------------------------------------------- the batch run

def test_each_folder_is_one_sample_and_a_failure_does_not_stop_the_run(
        fake_characterize_model, samples, tmp_path):
    model = _fake(fake_characterize_model)
    specs = batch.samples_from_folders([samples["a"], samples["broken"], samples["b"],
                                        samples["twin"]])
    seen = []
    result = batch.characterize_samples(specs, tmp_path / "run", model=model, options=FAST,
                                        figure=False, xyz=False, progress=False,
                                        on_sample=lambda *args: seen.append(args[2]["status"]))
    assert model.per_image_calls == 3  # the model is the one given, for every good sample
    assert (result.computed, result.resumed, result.failed) == (3, 0, 1)
    assert seen == ["ok", "error", "ok", "ok"] and not result.all_failed
    rows = batch.read_summary(result.summary_path)
    assert [row["sample"] for row in rows] == ["sample_a", "broken", "sample_b", "sample_a-2"]
    assert list(rows[0]) == list(batch.SUMMARY_COLUMNS)
    assert [row["status"] for row in rows] == ["ok", "error", "ok", "ok"]
    assert "image-03.png" in rows[1]["error"] and "cannot be read" in rows[1]["error"]
    assert rows[1]["theta_fractal_dimension"] == ""
    for row in (rows[0], rows[2], rows[3]):
        folder = tmp_path / "run" / row["output"]
        report = json.loads((folder / "report.json").read_text())
        assert row["images"] == "12" and report["shadows"]["count"] == 3
        uncertainty = report["uncertainty"]["parameters"]
        for key in ("fractal_dimension", "mixing_ratio", "wo3_cluster_size",
                    "tio2_cluster_size"):
            assert float(row[f"theta_{key}"]) == report["theta_hat"][key]
            assert float(row[f"theta_{key}_sd"]) == uncertainty[key]["sd"]
            assert [float(row[f"theta_{key}_95_low"]), float(row[f"theta_{key}_95_high"])] \
                == uncertainty[key]["interval_95"]
        z = report["shadows"]["descriptors"]["Z_hetero"]
        assert (float(row["Z_hetero_mean"]), float(row["Z_hetero_sd"])) == (z["mean"], z["std"])
        assert report["batch"]["sample"] == row["sample"]
    # the twin is sample_b's images under sample_a's name: its own folder, b's numbers
    assert rows[3]["theta_fractal_dimension"] == rows[2]["theta_fractal_dimension"]
    assert not (tmp_path / "run" / "broken" / "report.json").exists()


def test_a_rerun_resumes_and_redoes_only_what_changed(fake_characterize_model, samples,
                                                      tmp_path):
    model = _fake(fake_characterize_model)
    specs = batch.samples_from_folders([samples["a"], samples["broken"]])
    output = tmp_path / "run"
    batch.characterize_samples(specs, output, model=model, options=FAST, figure=False,
                               xyz=False, progress=False)
    report = output / "sample_a" / "report.json"
    written = report.stat().st_mtime_ns
    before = batch.read_summary(output / batch.SUMMARY_FILENAME)

    again = batch.characterize_samples(specs, output, model=model, options=FAST, figure=False,
                                       xyz=False, progress=False)
    assert (again.computed, again.resumed, again.failed) == (0, 1, 1)  # the failure is retried
    assert report.stat().st_mtime_ns == written
    assert batch.read_summary(output / batch.SUMMARY_FILENAME) == before
    # workers do not change the result: still resumed
    same = batch.characterize_samples(specs[:1], output, model=model,
                                      options=dict(FAST, workers=2), figure=False, xyz=False,
                                      progress=False)
    assert same.resumed == 1
    # other settings do, and so does --overwrite
    more = batch.characterize_samples(specs[:1], output, model=model,
                                      options=dict(FAST, shadows=4), figure=False, xyz=False,
                                      progress=False)
    assert more.computed == 1 and json.loads(report.read_text())["shadows"]["count"] == 4
    redone = batch.characterize_samples(specs[:1], output, model=model,
                                        options=dict(FAST, shadows=4), figure=False,
                                        xyz=False, overwrite=True, progress=False)
    assert redone.computed == 1
    # an incomplete output (a listed file missing) is computed again
    (output / "sample_a" / "shadows.npz").unlink()
    assert batch.characterize_samples(specs[:1], output, model=model,
                                      options=dict(FAST, shadows=4), figure=False, xyz=False,
                                      progress=False).computed == 1


def test_per_sample_settings_of_a_list_reach_the_images(fake_characterize_model, samples,
                                                        tmp_path):
    model = _fake(fake_characterize_model)
    listing = tmp_path / "list.csv"
    listing.write_text(f"folder,name,dose\n{samples['a']},plain,\n{samples['a']},dosed,50\n")
    result = batch.characterize_samples(batch.read_sample_list(listing), tmp_path / "run",
                                        model=model, options=FAST, figure=False, xyz=False,
                                        progress=False)
    assert result.failed == 0
    reports = {name: json.loads((tmp_path / "run" / name / "report.json").read_text())
               for name in ("plain", "dosed")}
    # the list's dose is the one this sample was run with (and what a resume compares)
    assert reports["dosed"]["batch"]["settings"]["imaging"]["dose"] == 50.0
    assert reports["plain"]["batch"]["settings"]["imaging"]["dose"] is None


def test_every_sample_failing_is_all_failed(fake_characterize_model, samples, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = batch.characterize_samples(batch.samples_from_folders([samples["broken"], empty]),
                                        tmp_path / "run", model=_fake(fake_characterize_model),
                                        options=FAST, figure=False, xyz=False, progress=False)
    assert result.all_failed and result.failed == 2
    assert [row["status"] for row in batch.read_summary(result.summary_path)] == ["error"] * 2


# ------------------------------------------------------------------------------------ CLI

@pytest.mark.parametrize("args, message", [
    (["--samples_from=/nonexistent/list.csv"], "cannot read the sample list"),
    (["examples/sample_a", "--samples_from=list.csv"], "not both"),
    (["examples/sample_a", "examples/sample_b", "--resamples=5"], "--resamples=5"),
    (["examples/sample_a", "--overwrite"], "--overwrite is for many samples"),
    (["examples/sample_a", "examples/sample_a/image-00.png", "--batch"], "not a folder"),
    (["examples/sample_a", "--resamples=0", "--shadow_theta=bootstrap"], "--resamples > 0"),
])
def test_bad_batch_flags_fail_in_one_line_before_tensorflow(one_error_line, args, message):
    result = run_tool(*args, timeout=60)
    assert message in one_error_line(result)


@pytest.fixture(scope="module")
def cli_run(samples, tmp_path_factory):
    """One hagg-characterize run on three folders (a, a broken copy, b) with the real model."""
    output = tmp_path_factory.mktemp("cli") / "run"
    result = run_tool(samples["a"], samples["broken"], samples["b"], f"--output={output}",
                      "--shadows=3", "--nofigure", "--noxyz", "--resamples=20")
    return result, output


def test_the_tool_characterizes_each_folder_and_writes_the_summary(cli_run):
    result, output = cli_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    rows = batch.read_summary(output / "summary.csv")
    assert [(row["sample"], row["status"]) for row in rows] == [
        ("sample_a", "ok"), ("broken", "error"), ("sample_b", "ok")]
    assert "warning: sample broken" in result.stderr
    assert "samples:" in result.stderr and "3/3" in result.stderr  # the progress bar
    assert "2 of 3 samples ok" in result.stdout
    assert result.stdout.count("θ_Df = ") == 2
    for name in ("sample_a", "sample_b"):
        report = json.loads((output / name / "report.json").read_text())
        assert report["shadows"]["count"] == 3
        truth = report["simulated_theta"]["fractal_dimension"]  # the real networks' answer
        assert abs(report["theta_hat"]["fractal_dimension"] - truth) < 3 * 0.030


@pytest.mark.slow
def test_the_tool_resumes_and_exits_2_only_when_every_sample_failed(cli_run, samples,
                                                                     one_error_line):
    _, output = cli_run
    again = run_tool(samples["a"], samples["broken"], samples["b"], f"--output={output}",
                     "--shadows=3", "--nofigure", "--noxyz", "--resamples=20")
    assert again.returncode == 0 and "(2 kept from an earlier run), 1 failed" in again.stdout
    failed = run_tool(samples["broken"], samples["broken"], f"--output={output}-bad",
                      "--quiet")
    lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert failed.returncode == 2 and len(lines) == 1 and "every sample failed (2)" in lines[0]


def test_a_sample_interrupted_while_rewriting_its_files_is_computed_again(
        fake_characterize_model, samples, tmp_path, monkeypatch):
    """Run 1 (3 shadows) finishes; run 2 (4 shadows) is interrupted after replacing some of the
    sample's files; run 3 with run 1's settings must not take run 1's report for those files."""
    from hagg_tf.estimation import html_report

    model = _fake(fake_characterize_model)
    specs = batch.samples_from_folders([samples["a"]])
    output = tmp_path / "run"
    batch.characterize_samples(specs, output, model=model, options=FAST, figure=False,
                               xyz=False, progress=False)

    def interrupted(*args, **kwargs):  # shadows.npz of run 2 is written by then
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(html_report, "write_html_report", interrupted)
        with pytest.raises(KeyboardInterrupt):
            batch.characterize_samples(specs, output, model=model,
                                       options=dict(FAST, shadows=4), figure=False, xyz=False,
                                       progress=False)
    again = batch.characterize_samples(specs, output, model=model, options=FAST, figure=False,
                                       xyz=False, progress=False)
    assert (again.computed, again.resumed) == (1, 0)
    from hagg_tf.model.io import load_aggregates

    assert len(load_aggregates(output / "sample_a" / "shadows.npz")) == 3
