"""The one way hagg_tf imports TensorFlow: without its start-up chatter on stderr unless asked.

Every stage that needs TensorFlow (``data``'s pipelines, ``networks``, ``training``, ``export``,
``estimation``, the command-line tools) imports it through :func:`import_tensorflow_quietly`, so
the Python API is as quiet as the command-line tools. This module sits below all of them and
imports nothing of hagg_tf.

Set ``HAGG_TF_VERBOSE=1`` to see TensorFlow's own start-up output (oneDNN, CUDA, ``cuInit``
lines) unchanged. A ``TF_CPP_MIN_LOG_LEVEL`` set before the import is kept as it is.
"""
from __future__ import annotations

import contextlib
import os
import sys

#: Environment variable that, set to anything but ``""`` or ``"0"``, keeps TensorFlow's start-up
#: output (no redirection of stderr, no change of ``TF_CPP_MIN_LOG_LEVEL``).
VERBOSE_ENVIRONMENT_VARIABLE = "HAGG_TF_VERBOSE"
#: ``TF_CPP_MIN_LOG_LEVEL`` used unless the user set one: 3 also hides the error-level
#: notices TensorFlow's C++ runtime logs on the first operation (``failed call to cuInit`` on a
#: machine without a GPU, oneDNN's float16 casts); real failures arrive as Python exceptions.
QUIET_LOG_LEVEL = "3"


def tensorflow_verbose() -> bool:
    """True if the user asked for TensorFlow's start-up output (``$HAGG_TF_VERBOSE``)."""
    return os.environ.get(VERBOSE_ENVIRONMENT_VARIABLE, "").strip() not in ("", "0")


@contextlib.contextmanager
def _stderr_silenced():
    """Sends file descriptor 2 to /dev/null for the duration (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def quiet_native_stderr():
    """Mutes what native (C++) code writes to stderr for the duration, unless
    ``$HAGG_TF_VERBOSE`` asks for it (:func:`tensorflow_verbose`).

    For TensorFlow's import and for other native runtimes that announce themselves there
    unasked (LiteRT's "Created TensorFlow Lite XNNPACK delegate"); Python exceptions raised
    inside still propagate, after stderr is restored.
    """
    if tensorflow_verbose():
        yield
        return
    with _stderr_silenced():
        yield


def import_tensorflow_quietly():
    """Imports TensorFlow (and Keras) and returns the ``tensorflow`` module.

    TensorFlow's C++ runtime prints oneDNN and CUDA notices before any Python logging setting can
    apply (``TF_CPP_MIN_LOG_LEVEL`` does not silence them in TF 2.21), which buries a tool's own
    one-line messages and every script's output. So, unless ``$HAGG_TF_VERBOSE`` asks for them,
    stderr is muted for the import and ``TF_CPP_MIN_LOG_LEVEL`` defaults to
    :data:`QUIET_LOG_LEVEL` for what the runtime logs later. Python exceptions raised by the
    import still propagate (their traceback is printed after stderr is restored). If TensorFlow
    is already imported, it is returned as it is.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    if not tensorflow_verbose():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LOG_LEVEL)
    with quiet_native_stderr():
        import tensorflow as tf  # noqa: F401  (the import is the point)
        import keras  # noqa: F401  (imported here so that its start-up is covered too)
    return tf
