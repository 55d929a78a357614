"""How the placeholder networks in saved_models/ were made (CPU, minutes per network).

The paper-scale networks need the full database (32 400 images) and GPU training; until they
are trained, saved_models/ ships networks trained briefly on a small database so that
``hagg-characterize`` runs end to end. This script records exactly how:

  python examples/make_placeholder_models.py --stage=data      # ~640 images at 512 px
  python examples/make_placeholder_models.py --stage=train     # the five networks, in turn
  python examples/make_placeholder_models.py --stage=export    # evaluate + composite export

Every stage resumes: the database generator skips finished shards, training resumes from its
backup (or returns at once when finished). Outputs go to work/placeholder/.
"""
import os
import sys
import time

from absl import app, flags

_STAGE = flags.DEFINE_enum("stage", "all", ["data", "train", "export", "all"], "What to run.")
_ROOT = flags.DEFINE_string("root", "work/placeholder", "Working directory.")
_NETWORKS = flags.DEFINE_list("networks", [
    "fractal_dimension", "mixing_ratio_regressor", "mixing_ratio_classifier",
    "wo3_cluster_size", "tio2_cluster_size"], "Networks to train.")
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Training epochs per network.")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes generating the database.")
_OUTPUT = flags.DEFINE_string("output", "saved_models", "Export base of the composite model.")

#: Eight (θ_ρ, θ_0, θ_1) triples spread over Table 2, two θ_Df each: 16 θ configurations.
TRIPLES = ((0.1, 1, 1), (0.3, 2, 5), (0.5, 3, 3), (0.7, 5, 2), (0.9, 6, 6), (0.2, 6, 3),
           (0.6, 1, 4), (0.8, 4, 1))


def placeholder_config():
    """40 images per θ at 512 px (1.2 nm): 26 train, 2 validation, 12 evaluation (= ν)."""
    from hagg_tf.data import DatasetConfig

    return DatasetConfig(seed=5, triples=TRIPLES, samples_per_theta=40, evaluation_per_theta=12,
                         validation_per_theta=2, min_per_theta=12, image_size=512, num_shards=4)


def main(argv):
    del argv
    dataset = os.path.join(_ROOT.value, "dataset")
    runs = os.path.join(_ROOT.value, "runs")
    if _STAGE.value in ("data", "all"):
        from hagg_tf.data import generate_dataset

        report = generate_dataset(dataset, placeholder_config(), workers=_WORKERS.value,
                                  command=" ".join(sys.argv))
        print(f"database: {report.records_written} samples written in {report.wall_s:.0f} s; "
              f"complete: {report.complete}")
    if _STAGE.value in ("train", "all"):
        from hagg_tf.training import train_network

        for name in _NETWORKS.value:
            started = time.perf_counter()
            result = train_network(name, dataset, os.path.join(runs, name),
                                   epochs=_EPOCHS.value, verbose=2)
            print(f"{name}: {result.epochs_run} epochs in {time.perf_counter() - started:.0f} s,"
                  f" {result.images_per_second:.2f} images/s")
    if _STAGE.value in ("export", "all"):
        from hagg_tf.training.exporting import export_from_runs

        export_from_runs(runs, _OUTPUT.value, version=1, kernel_dtype="float16",
                         evaluate_dataset=dataset, placeholder=True, overwrite=True)


if __name__ == "__main__":
    app.run(main)
