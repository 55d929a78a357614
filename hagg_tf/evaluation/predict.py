"""Running the five networks over a database split: the :class:`Predictions` of the evaluation.

Every image of the split goes once through each network's feature extractor f (after the
paper's preprocessing and f's own average pooling, computed in numpy exactly as
:mod:`hagg_tf.data.pooled` does), giving the single-image outputs and, for CNN^0 / CNN^1, the
112-dimensional features of every image. The multi-image outputs are then the heads g applied
to the concatenated features of groups of ν images of one θ (:func:`disjoint_groups`), averaged
over the ν rotations of each group, as the estimator averages a sample of n = ν images
(:func:`hagg_tf.estimation.estimators.cyclic_subsets`).

Fig. 9 asks for θ̂_0 and θ̂_1 at several ν, but CNN^0 and CNN^1 are trained for one ν (12):
their head takes exactly ν·112 features. For every other ν a new head g (dense 44 + ReLU,
dense 1 + ReLU, as in Table 3) is fitted on the frozen f's features of T (groups redrawn every
epoch, the best epoch by the validation part of T kept). This is a cheap stand-in for training
CNN^0 / CNN^1 anew per ν, which the paper did; it is stated in the predictions' ``info``.
"""
from __future__ import annotations

import os
import pathlib
import sys
import time
from typing import Optional, Sequence, Union

import numpy as np

from hagg_tf.data.pooled import (LABEL_KEYS, cache_pooling, caches_split, iter_pooled_parts,
                                 iter_pooled_shards, square_symmetry, sums_to_inputs)
from hagg_tf.data.design import disjoint_groups
from hagg_tf.data.network_specs import inverse_intensity_networks
from hagg_tf.estimation.model import TEST_TIME_SYMMETRIES_KEY, averaged_symmetries
from hagg_tf.evaluation.predictions import SAMPLE_HEADS_PREFIX, Predictions
from hagg_tf.training.group_heads import (fit_group_head, mean_over_rotations,
                                         predict_in_chunks, rotated_stacks)

SINGLE_IMAGE_OUTPUTS = {"fractal_dimension": "fractal_dimension_pred",
                        "mixing_ratio_regressor": "mixing_ratio_regressor_pred",
                        "mixing_ratio_classifier": "homogeneous_probability_pred"}
MULTI_IMAGE_NETWORKS = ("wo3_cluster_size", "tio2_cluster_size")
_CHUNK = 256
_CHUNK_PIXELS = 1 << 22


#: ``kind`` of a model description (:func:`load_networks`) for a composite export.
COMPOSITE_KIND = "composite export"


def model_sample_heads(model, description: dict):
    """The sample heads of the model :func:`load_networks` described, None if it has none
    (networks given in memory, training runs, an export without them)."""
    from hagg_tf.estimation.model import export_sample_heads, find_model

    if description.get("kind") != COMPOSITE_KIND:
        return None
    return export_sample_heads(*find_model(model))


def load_networks(model=None) -> tuple[dict, dict]:
    """Keras networks and a description: from a composite export or a training runs folder.

    Args:
        model: None (shipped default), a composite export (base, model or version directory),
            a folder with one training run per network (``<folder>/<network>/best.keras``), or
            a dict ``{network name: keras.Model}``.
    """
    from hagg_tf.data.network_specs import NETWORK_NAMES
    from hagg_tf.export.from_training import networks_from_composite

    if isinstance(model, dict):
        return dict(model), {"source": "Keras models given in memory", "kind": "keras"}
    if model is not None and (pathlib.Path(model) / NETWORK_NAMES[0] / "training.json").is_file():
        from hagg_tf.training.trainer import load_trained_network

        return ({name: load_trained_network(pathlib.Path(model) / name)
                 for name in NETWORK_NAMES}, {"source": str(model), "kind": "training runs"})
    models, metadata = networks_from_composite(model)
    return models, {"source": str(model or "shipped default"), "kind": COMPOSITE_KIND,
                    "architecture": metadata.get("architecture", "table3"),
                    "inverse_intensity_networks": sorted(inverse_intensity_networks(metadata)),
                    TEST_TIME_SYMMETRIES_KEY: averaged_symmetries(metadata),
                    "feature_source": dict(metadata.get("feature_source") or {}),
                    "model_card_status": (metadata.get("model_card") or {}).get("status")}


class _SplitRunner:
    """f and the single-image heads of the five networks on pooled images.

    f runs once per image for every group of networks that share it (``feature_source``, an
    export's record of its bit-identical copies of f: one pass for all five networks of a
    shared backbone); the heads then run on its features.

    With ``symmetries`` = 8 (an export with test-time symmetry averaging,
    :data:`~hagg_tf.estimation.model.TEST_TIME_SYMMETRIES_KEY`) every output is the mean over
    the square's 8 symmetries of the pooled images, as the export's graph computes it: the
    single-image heads' outputs and the features of CNN^0 / CNN^1 are averaged.
    """

    def __init__(self, models: dict, inverse_networks=None, symmetries: int = 1,
                 feature_source: Optional[dict] = None):
        import keras

        from hagg_tf.networks import input_pooling_layer
        from hagg_tf.training.pooled import pooled_feature_extractor

        self.models = models
        poolings = {int(input_pooling_layer(model).pool_size[0]) for model in models.values()}
        if len(poolings) != 1:
            raise ValueError(f"the networks pool their inputs differently: {sorted(poolings)}")
        self.pooling = poolings.pop()
        self.symmetries = int(symmetries)
        inverse_networks = (inverse_intensity_networks() if inverse_networks is None
                            else frozenset(inverse_networks))
        names = (*SINGLE_IMAGE_OUTPUTS, *MULTI_IMAGE_NETWORKS)
        self.inverted = {name: name in inverse_networks for name in names}
        self.source = {name: (feature_source or {}).get(name, name) for name in names}
        self.extractors = {source: pooled_feature_extractor(models[source], keras)
                           for source in sorted(set(self.source.values()))}

    def _features(self, sources, inputs: dict, index: int) -> dict:
        return {source: _predict(self.extractors[source], np.ascontiguousarray(
            square_symmetry(inputs[self.inverted[source]], index))) for source in sources}

    def run(self, part: dict, features_only: bool = False) -> dict:
        from hagg_tf.training.pooled import apply_trained_head

        inputs = {False: sums_to_inputs(part["plain"], self.pooling)[..., np.newaxis],
                  True: sums_to_inputs(part["inverted"], self.pooling)[..., np.newaxis]}
        single = {} if features_only else SINGLE_IMAGE_OUTPUTS
        sources = {self.source[name] for name in (*single, *MULTI_IMAGE_NETWORKS)}
        totals = {}
        for index in range(self.symmetries):
            features = self._features(sources, inputs, index)
            values = {key: np.asarray(apply_trained_head(self.models[name],
                                                         features[self.source[name]]))[:, 0]
                      for name, key in single.items()}
            values.update({f"features/{name}": features[self.source[name]]
                           for name in MULTI_IMAGE_NETWORKS})
            for key, value in values.items():
                totals[key] = value if key not in totals else totals[key] + value
        return {key: value / self.symmetries for key, value in totals.items()}


def _predict(model, inputs: np.ndarray) -> np.ndarray:
    # At most _CHUNK_PIXELS input pixels per call: the first feature maps of a chunk of 256
    # 2x2-pooled images (256 px) take a GB each.
    per_image = int(np.prod(inputs.shape[1:])) or 1
    return predict_in_chunks(model, inputs, max(1, min(_CHUNK, _CHUNK_PIXELS // per_image)))


def _parts(dataset_dir, split: str, pooling: int, cache_dir):
    """Pooled shards of a split: from the cache when it fits and holds the split, else decoded
    on the fly (a cache built for the evaluation split alone still serves it, and the refits
    of the ν-image heads decode the training split)."""
    if cache_dir is not None and (pathlib.Path(cache_dir) / "cache.json").is_file():
        if cache_pooling(cache_dir) == pooling and caches_split(cache_dir, split):
            # part by part: a split of a 2x2-pooled cache takes several GB
            yield from iter_pooled_parts(cache_dir, split, dataset_dir)
            return
    yield from iter_pooled_shards(dataset_dir, split, pooling)


def _run_split(runner: _SplitRunner, dataset_dir, split: str, cache_dir, progress: bool,
               features_only: bool = False):
    outputs, labels = {}, {key: [] for key in LABEL_KEYS}
    started = time.perf_counter()
    count = 0
    for part in _parts(dataset_dir, split, runner.pooling, cache_dir):
        for key, value in runner.run(part, features_only).items():
            outputs.setdefault(key, []).append(value)
        for key in LABEL_KEYS:
            labels[key].append(part[key])
        count += len(part["plain"])
        if progress:
            print(f"predict {split}: {count} images, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)
    return ({key: np.concatenate(value) for key, value in outputs.items()},
            {key: np.concatenate(value) for key, value in labels.items()})


def predict_split(dataset_dir: Union[str, os.PathLike], split: str = "evaluation", *,
                  model=None, nus: Sequence[int] = (4, 8, 12, 16), seed: int = 0,
                  baselines: Optional[dict] = None,
                  cache_dir: Optional[Union[str, os.PathLike]] = None,
                  progress: bool = True) -> Predictions:
    """Per-image and per-group network outputs on ``split`` (see the module docstring).

    Args:
        dataset_dir: the database (``manifest.json`` and TFRecord shards).
        split: split to predict (the paper's E is ``"evaluation"``).
        model: see :func:`load_networks`.
        nus: group sizes for the multi-image outputs; the networks' own ν uses their trained
            head, every other ν a head fitted on frozen features of T.
        seed: grouping and head fitting.
        baselines: optional per-image baseline arrays (keys of
            :data:`hagg_tf.evaluation.predictions.BASELINE_KEYS`) with a ``record_index`` array
            to align them.
        cache_dir: pooled cache of the database (:mod:`hagg_tf.data.pooled`), used when its
            pooling matches the networks'; otherwise images are decoded shard by shard.
        progress: print progress to stderr.

    Returns:
        :class:`Predictions`.
    """
    from hagg_tf.training.pooled import apply_trained_head
    from hagg_tf.tensorflow_import import import_tensorflow_quietly

    import_tensorflow_quietly()
    models, description = load_networks(model)
    runner = _SplitRunner(models, description.get("inverse_intensity_networks"),
                          description.get(TEST_TIME_SYMMETRIES_KEY, 1),
                          description.get("feature_source"))
    trained_nu = int(models["wo3_cluster_size"].input_shape[1])
    outputs, labels = _run_split(runner, dataset_dir, split, cache_dir, progress)
    arrays = {
        "record_index": labels["record_index"].astype(np.int64),
        "theta_id": labels["theta_id"].astype(np.int64),
        "theta": labels["theta"].astype(np.float64),
        "fractal_dimension": labels["fractal_dimension"],
        "mixing_ratio": labels["mixing_ratio"],
        "homogeneous": labels["homogeneous"].astype(bool),
        "num_particles": labels["num_particles"].astype(np.int64),
        **{key: outputs[key] for key in SINGLE_IMAGE_OUTPUTS.values()},
    }
    heads = model_sample_heads(model, description)
    if heads is not None:
        arrays.update(heads.to_arrays(SAMPLE_HEADS_PREFIX))
    description = {**description, "sample_heads": heads is not None}
    info = {"split": split, "dataset": str(dataset_dir), "model": description,
            "trained_nu": trained_nu, "group_heads": {}}
    other_nus = sorted({int(nu) for nu in nus} - {trained_nu})
    reference = {}
    if other_nus:
        reference["train"] = _run_split(runner, dataset_dir, "train", cache_dir, progress,
                                        features_only=True)
        reference["validation"] = _run_split(runner, dataset_dir, "validation", cache_dir,
                                             progress, features_only=True)
    for nu in sorted({int(nu) for nu in nus}):
        groups = disjoint_groups(arrays["theta_id"], nu, seed=seed)
        arrays[f"groups_nu{nu}"] = groups
        for name in MULTI_IMAGE_NETWORKS:
            features = rotated_stacks(outputs[f"features/{name}"][groups])
            if nu == trained_nu:
                arrays[f"{name}_pred_nu{nu}"] = mean_over_rotations(
                    np.asarray(apply_trained_head(models[name], features))[:, 0], len(groups), nu)
                continue
            (train_out, train_labels) = reference["train"]
            (validation_out, validation_labels) = reference["validation"]
            started = time.perf_counter()
            head, validation_mae = fit_group_head(
                name, nu, train_out[f"features/{name}"], train_labels,
                validation_out[f"features/{name}"], validation_labels, seed=seed)
            arrays[f"{name}_pred_nu{nu}"] = mean_over_rotations(_predict(head, features)[:, 0],
                                                                 len(groups), nu)
            info["group_heads"][f"{name}_nu{nu}"] = {
                "how": "head g refitted on the frozen f of the trained network",
                "validation_mae": (round(validation_mae, 4) if np.isfinite(validation_mae)
                                   else None),
                "seconds": round(time.perf_counter() - started, 1)}
    if baselines:
        order = {int(index): row for row, index in enumerate(baselines["record_index"])}
        try:
            rows = np.asarray([order[int(index)] for index in arrays["record_index"]])
        except KeyError as error:
            raise ValueError(f"the baselines lack record {error.args[0]}") from None
        for key, value in baselines.items():
            if key.startswith("baseline_"):
                arrays[key] = np.asarray(value)[rows]
    return Predictions(arrays, info)
