"""Errors that the CLI turns into documented exit codes: the one place that maps them.

Exit codes (README, "Exit codes"): 0 success, 1 a run failed, 2 usage error (argparse),
64 invalid input data (also a checkpoint refused as unsafe), 65 nothing to analyse (no
matching subject/run/events), 66 model weights or tokenizer missing (also a DataLad file whose content was not fetched), 69 not enough memory for
--mem, 73 output cannot be written, 75 the participant is being analysed by another process.
Every error class lives here, so that an error raised inside a Nipype node (which reaches the
CLI only as text in a crash file) is mapped back to its class by name (:func:`error_class`).
"""

EXIT_DATA = 64
EXIT_NO_INPUT = 65
EXIT_WEIGHTS = 66
EXIT_RESOURCES = 69
EXIT_OUTPUT = 73
EXIT_TEMPFAIL = 75


class BidsVlmError(Exception):
    """A problem with the user's input that has a clear message and an exit code."""

    exit_code = 1

    def __init__(self, message, path=None):
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


class DataError(BidsVlmError):
    """Input data that cannot be analysed (bad BIDS file, events, images)."""

    exit_code = EXIT_DATA


class NoInputError(BidsVlmError):
    """The filters select nothing (no such participant, task or run)."""

    exit_code = EXIT_NO_INPUT


class WeightsNotFoundError(BidsVlmError):
    """Model weights are not present locally and cannot be downloaded."""

    exit_code = EXIT_WEIGHTS


class ContentNotPresentError(BidsVlmError):
    """An input file of a DataLad / git-annex dataset whose content was not fetched (a link
    into the annex store whose object is absent)."""

    exit_code = EXIT_WEIGHTS


class ResourceError(BidsVlmError):
    """The analysis does not fit the resources the user allowed (--mem)."""

    exit_code = EXIT_RESOURCES


class OutputError(BidsVlmError):
    """The output directory cannot be used."""

    exit_code = EXIT_OUTPUT


class UnsafeCheckpointError(DataError):
    """A checkpoint that would run code when loaded (a TorchScript archive, or a pickle that
    asks to call a function a state dict never needs); refused before anything runs."""


class BusyError(BidsVlmError):
    """Another live process is analysing the same participant into the same directories."""

    exit_code = EXIT_TEMPFAIL


def error_class(name: str) -> type:
    """The error class called ``name`` (a subclass of :class:`BidsVlmError` defined here), or
    :class:`BidsVlmError` for any other name."""
    found = {cls.__name__: cls for cls in _subclasses(BidsVlmError)}
    return found.get(name, BidsVlmError)


def _subclasses(cls) -> list:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_subclasses(sub))
    return out
