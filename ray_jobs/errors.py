"""Bad input as the command line reports it: one line naming the problem and exit code 2, no traceback.

A job checks its inputs before any work starts (config values, dataset folders, model files). Such a
check raises :class:`InputError` (``ray_jobs``) or one of the named input errors of the method packages
(``INPUT_ERROR_NAMES``: ``ShardError``, ``ConditionError``, ... which cannot derive from a ``ray_jobs``
class, since those packages never import it). ``python -m ray_jobs`` prints ``error: <message>`` for
them and exits with 2; anything else (a bug, a failure in the middle of the work) keeps its traceback.
A broad ``ValueError`` is deliberately not an input error: it hides bugs.

``--debug`` (or ``FACESYNTH_DEBUG=1``) shows the traceback of an input error too, and leaves Ray Train's
own INFO lines on (``ray_jobs.train_common``).
"""
from __future__ import annotations

import os

DEBUG_ENV = "FACESYNTH_DEBUG"
EXIT_INPUT_ERROR = 2

# Input errors of the method packages, by qualified class name (so that mapping them imports nothing).
# Subclasses count too (e.g. fr.data.binfile.UnsafePickleError is a BinFileError).
INPUT_ERROR_NAMES = frozenset({
    "ray_jobs.config.ConfigError",
    "fr.data.shards.ShardError",
    "fr.data.recordio.RecordIOError",
    "fr.data.binfile.BinFileError",
    "fr.prototypes.PrototypeFileError",
    "fr.backbones.BackboneMismatchError",
    "fr.face_embedder.EmbedderMismatchError",
    "fr.gif.hier_codes.CodeCapacityError",
    "fr.gif.code_vectors.CodeVectorError",
    "generation.conditions.ConditionError",
    "generation.generator.GeneratorError",
    "generation.mixing.MixingError",
    "generation.checkpoint.CheckpointMismatchError",
    "generation.edm2_checkpoint.EDM2CheckpointError",
    "distill.latent_generator.LatentGeneratorError",
    "distill.teachers.TeacherError",
    "distill.students.StudentError",
    "evaluation.generation_fidelity.FidelityInputError",
})


class InputError(ValueError):
    """A job's input is unusable (a config value, a missing or mismatched file): found before work starts.

    A ``ValueError`` so that callers and tests that catch ``ValueError`` keep working."""


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder that a config key names (or defaults to) does not exist."""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_input_error(exc: BaseException) -> bool:
    """True for :class:`InputError` and the named input errors, raised in this process.

    An error that came back from a Ray task or actor (``ray.exceptions.RayError``, which Ray also makes an
    instance of the remote error's class) happened during the work: it keeps its traceback."""
    mro = type(exc).__mro__
    if any(_qualified(c).startswith("ray.exceptions.") for c in mro):
        return False
    return isinstance(exc, InputError) or any(_qualified(c) in INPUT_ERROR_NAMES for c in mro)


def one_line(exc: BaseException) -> str:
    """``error: <message>`` on one line (a multi-line message is joined with ``; ``)."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return "error: " + ("; ".join(lines) or type(exc).__name__)


def debug_enabled() -> bool:
    """``--debug`` was given (it sets the variable for Ray's workers too) or ``FACESYNTH_DEBUG=1``."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
