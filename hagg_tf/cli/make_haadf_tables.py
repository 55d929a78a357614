"""Compute the HAADF reference tables with abTEM frozen-phonon multislice (paper Sec. 2.1.3).

Each (phase, orientation) thickness series is one multislice run; it is written atomically to
its own JSON file under --work_dir as soon as it finishes, so an interrupted run resumes where
it stopped (finished tables are skipped). When all requested tables exist they are merged into
--output in the documented table format (hagg_tf/stem/tables.py), with provenance: settings,
crystal data and sources, software versions, run times.

The phase C/amorphous is the amorphous carbon support film (a seeded random structure,
hagg_tf/stem/crystals.py; each phonon configuration is an independent structure). It has one
table ("random" orientation) and is merged into its own file, --film_output, loaded by
hagg_tf.stem.tables.load_film_table. An amorphous structure needs a larger box than a crystal:
run it as its own command with its own --lateral_nm and --gpts (same sampling).

Examples:
  nice -n 10 python tools/make_haadf_tables.py --workers=2 \
      --output=hagg_tf/stem/data/haadf_tables.csv
  python tools/make_haadf_tables.py --phases=WO3/gamma --orientations=tilt00.00 \
      --work_dir=work/stem/convergence_fine --lateral_nm=1.92 --gpts=768 --num_configs=4 \
      --num_positions=16 --defocus=-1000 --nomerge
  nice -n 10 python tools/make_haadf_tables.py --phases=C/amorphous --lateral_nm=2.0 \
      --gpts=800 --max_thickness_nm=40 --num_configs=10 --num_positions=8 \
      --work_dir=work/stem/film_table --film_output=hagg_tf/stem/data/carbon_film_table.csv
  python tools/make_haadf_tables.py --compare=work/stem/haadf_tables/WO3_gamma_tilt00.00.json,\
work/stem/convergence_fine/WO3_gamma_tilt00.00.json
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys
import time
from pathlib import Path

from absl import flags

from hagg_tf.cli import (check_output_dir, check_output_file, define_float, define_seed, fail,
                         reject_extra_arguments, run_tool)
from hagg_tf.model.io import write_json_atomic
from hagg_tf.model.workers import make_process_pool

_WORK_DIR = flags.DEFINE_string("work_dir", "work/stem/haadf_tables",
                                "Directory for the per-table JSON results (resume state).")
_OUTPUT = flags.DEFINE_string("output", "work/stem/haadf_tables.csv",
                              "Merged table file (use hagg_tf/stem/data/haadf_tables.csv to ship).")
_FILM_OUTPUT = flags.DEFINE_string(
    "film_output", "work/stem/carbon_film_table.csv",
    "Merged support-film table (C/amorphous; use hagg_tf/stem/data/carbon_film_table.csv to ship).")
_PHASES = flags.DEFINE_list("phases", ["WO3/gamma", "WO3/delta", "TiO2/rutile", "TiO2/anatase"],
                            "Phases to simulate, as material/phase (C/amorphous: the carbon "
                            "support film, merged into --film_output).")
_ORIENTATIONS = flags.DEFINE_list("orientations", None,
                                  "Orientation labels to simulate (default: all ten).")
_WORKERS = flags.DEFINE_integer("workers", 1, "Parallel processes (one table each).",
                                lower_bound=1)
_MERGE = flags.DEFINE_boolean("merge", True, "Merge into --output when all tables are done.")
_MERGE_ONLY = flags.DEFINE_boolean("merge_only", False, "Only merge existing results.")
_COMPARE = flags.DEFINE_list("compare", None,
                             "Two per-table JSON files: print them side by side and exit.")
_STRUCTURE_FILES = flags.DEFINE_list(
    "structure_files", [], "Replace built-in structures: material/phase=path (any ASE-readable "
    "file, e.g. the original CIF).")
_LATERAL = define_float("lateral_nm", 1.28, "Simulation box edge, nm, > 0.", positive=True)
_GPTS = flags.DEFINE_integer("gpts", 512, "Grid points per box edge.", lower_bound=1)
_SLICE = define_float("slice_thickness", 2.0, "Slice thickness, Angstrom, > 0.", positive=True)
_MAX_THICKNESS = define_float("max_thickness_nm", 64.0, "Largest thickness, nm, > 0.",
                              positive=True)
_EXIT_EVERY = define_float("exit_every_nm", 1.0, "Thickness step of the table, nm, > 0.",
                           positive=True)
_CONFIGS = flags.DEFINE_integer("num_configs", 2, "Frozen-phonon configurations.",
                                lower_bound=1)
_POSITIONS = flags.DEFINE_integer("num_positions", 10, "Probe positions averaged.",
                                  lower_bound=1)
_PARAMETRIZATION = flags.DEFINE_enum("parametrization", "kirkland", ["kirkland", "lobato"],
                                     "Atomic potential parametrization.")
_DEFOCUS = define_float("defocus", 1000.0, "Probe defocus, Angstrom (see MultisliceSettings).")
_SEED = define_seed(20231028, "Base seed.")


def _result_path(work_dir: Path, key: str, orientation: str) -> Path:
    return work_dir / f"{key.replace('/', '_')}_{orientation}.json"


def _worker(job: tuple) -> tuple[str, float]:
    """Run one table in a worker process; single-threaded so workers do not compete."""
    phase_key, orientation_label, settings_dict, structure_file, path = job
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import abtem

    from hagg_tf.stem import crystals, multislice
    abtem.config.set({"fftw.threads": 1, "mkl.threads": 1})
    cpu_started = time.process_time()
    settings = multislice.MultisliceSettings(**settings_dict)
    if phase_key in crystals.AMORPHOUS_PHASES:
        result = multislice.simulate_film_series(crystals.AMORPHOUS_PHASES[phase_key], settings)
    else:
        phase = crystals.PHASES[phase_key]
        unit_cell = None
        if structure_file:
            import ase.io
            unit_cell = ase.io.read(structure_file)
        orientation = {o.label: o for o in multislice.orientations(phase)}[orientation_label]
        result = multislice.simulate_thickness_series(phase, orientation, settings,
                                                      unit_cell=unit_cell)
    result["finished_at"] = time.time()
    result["cpu_s"] = time.process_time() - cpu_started
    result["structure_file"] = structure_file
    # One-space indent, no final newline; a random orientation's tilt is NaN, kept as the
    # token Python's json reads (the tables' provenance records these files as they are).
    write_json_atomic(path, result, indent=1, allow_nan=True, trailing_newline=False)
    return f"{phase_key}/{orientation_label}", result["runtime_s"]


def _compare(paths: list[str]) -> None:
    import numpy as np
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            fail(f"{path}: cannot read a per-table result ({error})")
    names = ["A", "B"]
    for name, result, path in zip(names, results, paths):
        s = result["settings"]
        print(f"{name}: {path}\n   box {result['box_angstrom'][0]:.2f} x "
              f"{result['box_angstrom'][1]:.2f} A ({result['gpts'][0]} x {result['gpts'][1]} gpts), "
              f"slice {s['slice_thickness_angstrom']} A, defocus {s['defocus_angstrom']:g} A, "
              f"{s['num_configs']} phonon configs x {s['num_positions']} positions, "
              f"run time {result['runtime_s']:.0f} s")
    thickness_a = np.asarray(results[0]["thickness_nm"])
    thickness_b = np.asarray(results[1]["thickness_nm"])
    print(f"{'t/nm':>6} {'I_A':>10} {'+-sem':>9} {'I_B':>10} {'+-sem':>9} {'(A-B)/B':>8}")
    deviations = []
    for t in (1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 64):
        if t > thickness_a[-1] or t > thickness_b[-1]:
            continue
        ia = float(np.interp(t, thickness_a, results[0]["intensity"]))
        ea = float(np.interp(t, thickness_a, results[0]["intensity_sem"]))
        ib = float(np.interp(t, thickness_b, results[1]["intensity"]))
        eb = float(np.interp(t, thickness_b, results[1]["intensity_sem"]))
        deviations.append((ia - ib) / ib)
        print(f"{t:6.0f} {ia:10.5f} {ea:9.5f} {ib:10.5f} {eb:9.5f} {100 * (ia - ib) / ib:7.1f}%")
    deviations = np.abs(deviations)
    print(f"max |A-B|/B = {100 * deviations.max():.1f} %, mean = {100 * deviations.mean():.1f} %")


def _merge(work_dir: Path, jobs: list[tuple], output: Path) -> None:
    import numpy as np

    from hagg_tf.stem import multislice, tables
    results = [json.loads(Path(job[-1]).read_text()) for job in jobs]
    table_list = [tables.HaadfTable(r["material"], tables.MATERIAL_LABELS[r["material"].lower()],
                                    r["phase"], r["orientation"], np.asarray(r["thickness_nm"]),
                                    np.clip(np.asarray(r["intensity"]), 0.0, None))
                  for r in results]
    started = min(r["finished_at"] - r["runtime_s"] for r in results)
    finished = max(r["finished_at"] for r in results)
    crystals_used = {}
    for r in results:
        crystals_used[f"{r['material']}/{r['phase']}"] = dict(r["crystal"],
                                                               structure_file=r.get("structure_file"))
    provenance = {
        "generator": "tools/make_haadf_tables.py (hagg_tf.stem.multislice, abTEM frozen phonons)",
        "settings": results[0]["settings"],
        "detector": {"intensity": "measured Spectra 300 sensitivity curve "
                                  "(hagg_tf/stem/data/haadf_detector_sensitivity.txt)",
                     "intensity_flat": "flat annulus 55-250 mrad"},
        "software": multislice.software_versions(),
        "crystals": crystals_used,
        "orientations": {f"{r['material']}/{r['phase']}/{r['orientation']}":
                         {"tilt_deg_from_100_to_010": r["tilt_deg"], "direction": r["direction"]}
                         for r in results},
        "runtime_s_per_table": {f"{r['material']}/{r['phase']}/{r['orientation']}":
                                round(r["runtime_s"], 1) for r in results},
        "sum_of_table_run_times_s": round(sum(r["runtime_s"] for r in results), 1),
        "wall_time_s": round(finished - started, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(finished)),
    }
    merged = tables.HaadfTables(table_list, provenance, str(output))
    extra = {name: [np.asarray(r[name]) for r in results]
             for name in ("intensity_flat", "intensity_sem", "intensity_flat_sem")}
    comments = ["Computed by tools/make_haadf_tables.py in hagg_tf with abTEM (frozen-phonon "
                "multislice); settings, crystal sources, versions and run times in the provenance line.",
                "Columns: intensity = detector with the measured sensitivity curve; intensity_flat = "
                "flat 55-250 mrad annulus; *_sem = standard error over phonon configurations."]
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_suffix(output.suffix + ".tmp")
    temporary.write_text(merged.to_text(extra, comments))
    os.replace(temporary, output)
    tables.load_tables(output)  # the merged file must pass the public loader
    print(f"merged {len(results)} tables into {output} (wall time {finished - started:.0f} s, "
          f"sum of per-table run times {provenance['sum_of_table_run_times_s']:.0f} s)")


def _merge_film(result_path: Path, output: Path) -> None:
    """Write the support-film result as its own table file (read back by load_film_table)."""
    import numpy as np

    from hagg_tf.stem import multislice, tables
    r = json.loads(result_path.read_text())
    table = tables.HaadfTable(r["material"], tables.FILM_LABEL, r["phase"], r["orientation"],
                              np.asarray(r["thickness_nm"]),
                              np.clip(np.asarray(r["intensity"]), 0.0, None))
    runs = r["settings"]["num_configs"] * r["settings"]["num_positions"]
    provenance = {
        "generator": "tools/make_haadf_tables.py --phases=C/amorphous (hagg_tf.stem.multislice."
                     "simulate_film_series, abTEM frozen phonons)",
        "settings": r["settings"],
        "detector": {"intensity": "measured Spectra 300 sensitivity curve "
                                  "(hagg_tf/stem/data/haadf_detector_sensitivity.txt)",
                     "intensity_flat": "flat annulus 55-250 mrad"},
        "software": multislice.software_versions(),
        "structure": dict(r["crystal"], box_angstrom=r["box_angstrom"],
                          atoms_per_structure=r["num_atoms"],
                          structure_seeds=r["structure_seeds"]),
        "gpts": r["gpts"],
        "runs": f"{r['settings']['num_configs']} independent structures x "
                f"{r['settings']['num_positions']} probe positions = {runs}",
        "wall_time_s": round(r["runtime_s"], 1),
        "cpu_time_s": round(r["cpu_s"], 1) if "cpu_s" in r else None,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r["finished_at"])),
    }
    extra = {name: [np.asarray(r[name])]
             for name in ("intensity_flat", "intensity_sem", "intensity_flat_sem")}
    comments = ["Support film: amorphous carbon, computed by tools/make_haadf_tables.py "
                "--phases=C/amorphous with abTEM (frozen-phonon multislice over independent "
                "random structures); settings, structure, versions and run time in the provenance "
                "line.",
                "Columns: intensity = detector with the measured sensitivity curve; "
                "intensity_flat = flat 55-250 mrad annulus; *_sem = standard error over all "
                "(structure, probe position) runs."]
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_suffix(output.suffix + ".tmp")
    temporary.write_text(tables.tables_text([table], provenance, extra, comments))
    os.replace(temporary, output)
    tables.load_film_table(output)  # the merged file must pass the public loader
    print(f"merged the support-film table into {output} (run time {r['runtime_s']:.0f} s)")


def main(argv):
    reject_extra_arguments(argv)
    if _COMPARE.value:
        if len(_COMPARE.value) != 2:
            fail("--compare needs exactly two JSON files")
        _compare(_COMPARE.value)
        return 0
    if not _MERGE_ONLY.value:
        check_output_dir(_WORK_DIR.value, "--work_dir")
    try:
        from hagg_tf.stem import crystals, multislice
    except ImportError as error:
        fail(f"the table tool needs the 'physics' extra (abtem, ase): {error}")
    known = {**crystals.PHASES, **crystals.AMORPHOUS_PHASES}
    unknown = [key for key in _PHASES.value if key not in known]
    if unknown:
        fail(f"unknown phase(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if _MERGE.value or _MERGE_ONLY.value:
        if any(key in crystals.PHASES for key in _PHASES.value):
            check_output_file(_OUTPUT.value)
        if any(key in crystals.AMORPHOUS_PHASES for key in _PHASES.value):
            check_output_file(_FILM_OUTPUT.value, "--film_output")
    structure_files = {}
    for item in _STRUCTURE_FILES.value:
        key, _, path = item.partition("=")
        if key not in crystals.PHASES or not path:
            fail(f"--structure_files entry {item!r} must be material/phase=path (a crystal phase)")
        if not Path(path).is_file():
            fail(f"{path}: structure file not found")
        structure_files[key] = str(Path(path).resolve())
    try:
        settings = multislice.MultisliceSettings(
            lateral_nm=_LATERAL.value, gpts=_GPTS.value, slice_thickness_angstrom=_SLICE.value,
            max_thickness_nm=_MAX_THICKNESS.value, exit_every_nm=_EXIT_EVERY.value,
            num_configs=_CONFIGS.value, num_positions=_POSITIONS.value,
            parametrization=_PARAMETRIZATION.value, defocus_angstrom=_DEFOCUS.value,
            seed=_SEED.value)
    except ValueError as error:
        fail(str(error))
    work_dir = Path(_WORK_DIR.value)
    jobs = []
    for key in _PHASES.value:
        if key in crystals.AMORPHOUS_PHASES:
            available = [multislice.FILM_ORIENTATION]
        else:
            available = [o.label for o in multislice.orientations(crystals.PHASES[key])]
        wanted = _ORIENTATIONS.value or available
        bad = [label for label in wanted if label not in available]
        if bad:
            fail(f"unknown orientation(s) {', '.join(bad)}; known: {', '.join(available)}")
        for label in wanted:
            jobs.append((key, label, settings.as_dict(), structure_files.get(key),
                         str(_result_path(work_dir, key, label))))
    todo = []
    for job in jobs:
        path = Path(job[-1])
        if path.exists():
            previous = json.loads(path.read_text())
            if previous["settings"] != job[2]:
                fail(f"{path} was computed with other settings; use another --work_dir or "
                     "delete it")
            continue
        todo.append(job)
    print(f"{len(jobs) - len(todo)} of {len(jobs)} tables already in {work_dir}; computing {len(todo)} "
          f"with {_WORKERS.value} worker(s)", flush=True)
    if todo and not _MERGE_ONLY.value:
        from tqdm import tqdm
        work_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        with make_process_pool(_WORKERS.value) as pool:
            futures = [pool.submit(_worker, job) for job in todo]
            with tqdm(total=len(futures), desc="HAADF tables", unit="table", file=sys.stdout) as bar:
                for future in concurrent.futures.as_completed(futures):
                    name, runtime = future.result()
                    bar.set_postfix_str(f"{name} {runtime:.0f}s")
                    bar.update()
        print(f"computed {len(todo)} tables in {time.time() - started:.0f} s", flush=True)
    missing = [job[-1] for job in jobs if not Path(job[-1]).exists()]
    if missing:
        print(f"{len(missing)} tables still missing; not merging", flush=True)
        return 1 if _MERGE_ONLY.value else 0
    if _MERGE.value or _MERGE_ONLY.value:
        film_jobs = [job for job in jobs if job[0] in crystals.AMORPHOUS_PHASES]
        crystal_jobs = [job for job in jobs if job[0] not in crystals.AMORPHOUS_PHASES]
        if crystal_jobs:
            _merge(work_dir, crystal_jobs, Path(_OUTPUT.value))
        for job in film_jobs:
            _merge_film(Path(job[-1]), Path(_FILM_OUTPUT.value))
    return 0


def run():
    run_tool(main)


if __name__ == "__main__":
    run()
