"""The library's error types, and its warning. Only the CLI turns them into one-line messages."""


class BabelheadsError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""


class ModelLoadError(BabelheadsError):
    """The model could not be found, read or loaded."""


class UnsupportedModelError(BabelheadsError):
    """The model does not route attention through transformers' attention interface."""


class TaskError(BabelheadsError):
    """A task cannot be built from the given corpus, needles, language or grid."""


class RunStoreError(BabelheadsError):
    """A run directory is inconsistent, belongs to another config, or holds a damaged table."""


class ThinDataWarning(UserWarning):
    """A language or condition has too few samples to give a number; it gets NaN instead.

    Here, not beside the aggregation that warns most, so the CLI can filter it without loading pandas."""
