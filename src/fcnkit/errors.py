"""fcnkit's own error types: what a user can get wrong, each named.

Every layer raises these for user mistakes (a bad config key, a corrupt image, a checkpoint that is not one,
a weights file missing while offline, a checksum mismatch, a missing optional dependency). The command line
prints them as one line, ``fcnkit: error: ...``, and exits with status 2; any other exception is a bug in
fcnkit (or in a library below it) and keeps its traceback.

Each type also derives from the built-in exception it refines (``ValueError``, ``KeyError``...), so code
written against the built-in types keeps working.
"""

from __future__ import annotations


class FcnkitError(Exception):
    """A mistake in what fcnkit was given, explained in its message."""


class ConfigError(FcnkitError, ValueError):
    """A config file, override or option that does not fit the schema."""


class UnknownNameError(FcnkitError, KeyError):
    """An unknown model, dataset or weights name; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument; show the message as written
        return str(self.args[0]) if self.args else ""


class UnknownOptionError(FcnkitError, TypeError):
    """A factory called with an option it does not take; the message lists the accepted ones."""


class DataError(FcnkitError, ValueError):
    """A dataset problem: missing or unreadable files, wrong label values, mismatched sizes."""


class ImageTooLargeError(DataError):
    """An image with more pixels than the limit it was read under (a decompression bomb, or simply too big)."""


class CheckpointError(FcnkitError, ValueError):
    """A file that is not a loadable fcnkit checkpoint (truncated, not a checkpoint, unsafe, newer format)."""


class ChecksumError(FcnkitError, RuntimeError):
    """A file's digest does not match the one declared for it."""


class OfflineError(FcnkitError, RuntimeError):
    """A file is needed from the network while ``FCNKIT_OFFLINE`` is set."""


class MissingDependencyError(FcnkitError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TrainingDiverged(FcnkitError, RuntimeError):
    """The loss or the weights became NaN or infinite; training stopped and the last good checkpoint was kept."""


class ExportError(FcnkitError, ValueError):
    """The model could not be exported as asked (e.g. an axis meant to be dynamic was fixed)."""


class ExportVerificationError(ExportError):
    """ONNX Runtime's output differs from PyTorch's by more than the tolerance."""


class MissingFileError(FcnkitError, FileNotFoundError):
    """A file or folder fcnkit was pointed at does not exist."""


class OutputError(FcnkitError, FileExistsError):
    """An output would replace a file fcnkit did not write there: an input, or another program's file."""
