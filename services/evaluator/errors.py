"""Evaluation failures, classified for the runtime (see ``shared.errors``)."""

from shared.errors import PermanentError


class BenchmarkFormatError(PermanentError):
    """Benchmark files on disk are not in the official layout; rerunning will not fix them."""


class PredictionCountError(PermanentError):
    """A generation or judge callable returned a different number of outputs than inputs."""


class JudgeTemplateError(PermanentError):
    """A user-supplied judge prompt template has missing or unknown placeholders."""
