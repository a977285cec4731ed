"""Typed errors: everything a user can cause derives from BnRewriteError.

The CLI turns these into one line on stderr and an exit code (see report.py);
anything else escaping the library is an internal bug and may raise.
"""
from __future__ import annotations


class BnRewriteError(Exception):
    """A problem the user can fix: names the file (when known) and the problem."""

    def __init__(self, problem: str, path: str | None = None) -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{path}: {problem}" if path else problem)


class GraphLoadError(BnRewriteError):
    """The file is missing, unreadable, or not a GraphDef."""


class InvalidGraphError(BnRewriteError):
    """The GraphDef parsed but is not a well-formed graph (see validate.py)."""


class VerificationError(BnRewriteError):
    """The rewritten graph does not compute what the original does."""


class CannotVerifyError(BnRewriteError):
    """TensorFlow cannot run the graph (unknown op, input it cannot fill, ...)."""


class UnsafeGraphError(CannotVerifyError):
    """Running the graph would run ops with side effects (files, Python, ...): refused
    unless the caller trusts the graph (--trust-graph, VerifyOptions(trust_graph=True))."""


class VerifyTimeout(CannotVerifyError):
    """A run of the graph took longer than the time limit (--timeout); the worker was killed."""


class VerifyMemoryLimit(CannotVerifyError):
    """A run of the graph needed more memory than the worker's limit (--max-memory)."""


class GraphRunError(CannotVerifyError):
    """TensorFlow ran the graph and reported why it cannot (its status, reason and node),
    as opposed to crashing or not being installed."""
