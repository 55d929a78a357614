"""Where the time of one database record goes: the realistic preset against the paper's.

Computes --count records of the preset (sample indices spread over the whole design) in this
process, as a generation worker does, and prints the CPU time per record, then the share of each
stage from a profile (cProfile: the shares, not the absolute times, are meaningful there), the
serialisation the writing process adds (``encode_example``, TensorFlow) and the PNG size. The
profiler slows Python-heavy stages (the aggregate generator) more than numpy-heavy ones.

  python benchmarks/bench_realistic.py --preset=realistic --count=100
  python benchmarks/bench_realistic.py --preset=paper --count=100
"""

import cProfile
import pstats
import time

import numpy as np
from absl import app, flags

from hagg_tf.data import build_design, preset
from hagg_tf.data import records, writer
from hagg_tf.tensorflow_import import import_tensorflow_quietly

_PRESET = flags.DEFINE_string("preset", "realistic", "Database preset.")
_COUNT = flags.DEFINE_integer("count", 100, "Records to compute.", lower_bound=1)

#: Stages as (label, file suffix, function name) of the profile.
_STAGES = (
    ("draw conditions", "data/randomization.py", "draw_conditions"),
    ("generate aggregate", "model/generator.py", "sample_aggregate"),
    ("descriptors", "model/descriptors.py", "describe"),
    ("render (all)", "stem/render.py", "render_stem"),
    ("  scan-displaced particles", "stem/render.py", "_render_displaced"),
    ("  detector (shot/read noise)", "stem/render.py", "_detector_counts"),
    ("resample to the grid", "stem/resample.py", "resample"),
    ("PNG (noisy, Up + RLE)", "data/records.py", "encode_noisy_png16"),
    ("PNG (Pillow, level 6)", "data/records.py", "encode_png16"),
)


def main(argv):
    del argv
    config = preset(_PRESET.value)
    design = build_design(config)
    step = max(1, design.num_samples // _COUNT.value)
    indices = list(range(0, design.num_samples, step))[:_COUNT.value]
    tasks = writer.sample_tasks(design, indices, None)
    records.compute_sample(tasks[0])  # tables, caches, imports

    started = time.process_time()
    payloads = [records.compute_sample(task) for task in tasks]
    per_record = (time.process_time() - started) / len(tasks)
    print(f"preset {_PRESET.value}: {len(tasks)} records, {1e3 * per_record:.1f} ms CPU per "
          f"record (one process, unprofiled)")

    profile = cProfile.Profile()
    profile.enable()
    for task in tasks:
        records.compute_sample(task)
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(entry[3] for key, entry in stats.items()
                if key[2] == "compute_sample" and key[0].endswith("data/records.py"))
    print("  share of the profiled time per stage:")
    for label, suffix, name in _STAGES:
        cumulative = sum(entry[3] for key, entry in stats.items()
                         if key[2] == name and key[0].endswith(suffix))
        if cumulative:
            print(f"    {label:30s} {100 * cumulative / total:5.1f} %  "
                  f"(≈ {1e3 * per_record * cumulative / total:5.1f} ms)")

    import_tensorflow_quietly()
    records.encode_example(payloads[0], "train")  # TensorFlow's first-call setup
    started = time.process_time()
    for payload in payloads:
        records.encode_example(payload, "train")
    serialise = (time.process_time() - started) / len(tasks)
    sizes = np.array([len(payload["png"]) for payload in payloads])
    print(f"  writer: encode_example {1e3 * serialise:.2f} ms per record; PNG "
          f"{sizes.mean() / 1e3:.0f} KB mean ({sizes.min() / 1e3:.0f}–{sizes.max() / 1e3:.0f})")


if __name__ == "__main__":
    app.run(main)
