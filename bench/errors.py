"""The one error a benchmark raises when it cannot run; the message says why and carries no secret."""


class BenchError(Exception):
    """The benchmark could not run."""
