"""The composite model on LiteRT: characterize's networks without TensorFlow in the process.

:class:`LiteRTCharacterizeModel` runs ``characterize.tflite``, the LiteRT conversion of the
composite's :data:`~hagg_tf.estimation.model.PER_IMAGE_SIGNATURE` and
:data:`~hagg_tf.estimation.model.CLUSTER_HEADS_SIGNATURE` (written by
:mod:`hagg_tf.export.litert`), with the ``ai-edge-litert`` interpreter. It has the methods of
:class:`~hagg_tf.estimation.model.CharacterizeModel` that characterize uses (contract A:
``per_image``, ``cluster_heads``, ``estimate`` and the export's facts), so either can be passed
to :func:`hagg_tf.estimation.characterize`; :func:`~hagg_tf.estimation.model.
load_characterize_model` picks one. Importing this module, or running the model, never imports
TensorFlow: that import and the SavedModel's loading are most of a cold start's time.

Kernels: LiteRT's XNNPACK delegate by default, faster than its builtin kernels on these
networks and, on the composite's Keras graph, the closer of the two to TensorFlow
(``xnnpack=False`` takes the builtin kernels; docs/learning.md, "Runtimes of
hagg-characterize", has both measured).
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Union

import numpy as np

from hagg_tf.estimation.model import (CLUSTER_HEADS_SIGNATURE, LITERT_FILENAME,
                                      PER_IMAGE_OUTPUTS, PER_IMAGE_SIGNATURE, CompositeRuntime,
                                      LiteRTUnusable, find_model, litert_unusable)

#: Images per call of the per-image signature: every image is computed on its own (per-image
#: scaling and networks), so chunks give the same numbers and bound the memory of the
#: activations (~5 MB per image at 512 px for the compact networks).
IMAGES_PER_CALL = 32


def litert_installed() -> bool:
    """True if the LiteRT interpreter (pip package ``ai-edge-litert``) can be imported; checked
    without importing it."""
    import importlib.util

    return importlib.util.find_spec("ai_edge_litert") is not None


def make_interpreter(model_path: Optional[Union[str, os.PathLike]] = None, *,
                     model_content: Optional[bytes] = None, num_threads: Optional[int] = None,
                     xnnpack: bool = True):
    """A LiteRT interpreter of a ``.tflite`` file or buffer, on XNNPACK unless not ``xnnpack``.

    Args:
        model_path, model_content: the model, as a file or as bytes (one of them).
        num_threads: CPU threads (None: every core this process may run on).
        xnnpack: use LiteRT's default XNNPACK delegate (else its builtin kernels, slower).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from hagg_tf.model.batch import default_workers
    from hagg_tf.tensorflow_import import quiet_native_stderr

    resolver = OpResolverType.AUTO if xnnpack else \
        OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    # LiteRT's C++ runtime announces its XNNPACK delegate on stderr ("INFO: Created TensorFlow
    # Lite XNNPACK delegate for CPU."), unasked, like TensorFlow's start-up notices; errors still
    # arrive as Python exceptions. $HAGG_TF_VERBOSE keeps the notice.
    with quiet_native_stderr():
        interpreter = Interpreter(model_path=None if model_path is None else str(model_path),
                                  model_content=model_content,
                                  num_threads=int(num_threads or default_workers()),
                                  experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()  # applies the delegate, hence the notice
    return interpreter


class LiteRTCharacterizeModel(CompositeRuntime):
    """The LiteRT conversion of a composite export, loaded for inference (no TensorFlow).

    Args:
        path: export base, model directory or version directory (as for
            :class:`~hagg_tf.estimation.model.CharacterizeModel`); None loads the default.
        num_threads: CPU threads of the interpreter (None: every core available).
        xnnpack: run on LiteRT's XNNPACK delegate (else on its builtin kernels).

    Attributes:
        version_dir: the loaded version directory.
        metadata: its ``hagg_tf_export.json``.
        runtime: ``"litert"``.

    Raises:
        FileNotFoundError: no export at ``path``.
        ValueError: the conversion is missing, stale (from another SavedModel), or
            ai-edge-litert is not installed; the message says which.
    """

    runtime = "litert"

    def __init__(self, path: Optional[Union[str, os.PathLike]] = None, *,
                 num_threads: Optional[int] = None, xnnpack: bool = True):
        self.version_dir, self.metadata = find_model(path)
        reason = litert_unusable(self.version_dir)
        if reason is not None:
            raise LiteRTUnusable(reason)
        self._interpreter = make_interpreter(self.version_dir / LITERT_FILENAME,
                                             num_threads=num_threads, xnnpack=xnnpack)
        self._runners = {}

    @property
    def litert_path(self) -> pathlib.Path:
        """The ``.tflite`` file run."""
        return self.version_dir / LITERT_FILENAME

    def _run(self, signature: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if signature not in self._runners:
            self._runners[signature] = self._interpreter.get_signature_runner(signature)
        # The runner resizes its inputs to these shapes (dynamic b, n, k) before running.
        return self._runners[signature](**inputs)

    def _run_per_image(self, counts: np.ndarray, electrons: np.ndarray) -> dict[str, np.ndarray]:
        electrons = np.broadcast_to(electrons, counts.shape[:2])
        chunks = [self._run(PER_IMAGE_SIGNATURE,
                            images=np.ascontiguousarray(counts[:, start:start + IMAGES_PER_CALL]),
                            electrons_per_pixel=np.ascontiguousarray(
                                electrons[:, start:start + IMAGES_PER_CALL]))
                  for start in range(0, counts.shape[1], IMAGES_PER_CALL)]
        return {key: np.concatenate([chunk[key] for chunk in chunks], axis=1)
                for key in PER_IMAGE_OUTPUTS}

    def _run_cluster_heads(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self._run(CLUSTER_HEADS_SIGNATURE,
                         **{name: np.ascontiguousarray(array) for name, array in arrays.items()})

    def estimate(self, counts: np.ndarray, electrons_per_pixel: np.ndarray):
        """θ̂ of one sample from its (n, H, W) images (n ≥ ν), as
        :meth:`CharacterizeModel.estimate` (the estimators of Sec. 2.3 applied in numpy to
        :meth:`per_image` and :meth:`cluster_heads` on the cyclic ν-subsets)."""
        from hagg_tf.estimation.uncertainty import bootstrap_theta

        counts = self._check_sample(counts)
        outputs = self.per_image(counts, np.asarray(electrons_per_pixel).reshape(-1))
        estimate, _ = bootstrap_theta(outputs, self.cluster_heads, self.num_images,
                                      resamples=0, sample_heads=self.sample_heads)
        return estimate
