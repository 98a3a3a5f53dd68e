"""One error hierarchy: the CLI turns these (and only these) into one line and exit code 1."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DnaDeployError(Exception):
    """A user-facing problem: bad input, missing file, absent runtime. Message says how to fix it."""

    exit_code = 1  # what the CLI exits with (one line on stderr)


class SpaceError(DnaDeployError):
    """A search-space definition is invalid."""


class ArchError(DnaDeployError):
    """An architecture string or JSON does not fit its search space."""


class TableError(DnaDeployError):
    """A latency table is missing, corrupt, for another space, or lacks entries."""


class RuntimeUnavailable(DnaDeployError):
    """A runtime (or its hardware) is not installed here; the message names the extra to install."""


class DataError(DnaDeployError):
    """A dataset, checkpoint or other input file is missing or does not fit."""


class BadImage(DataError):
    """An image of a dataset cannot be read. Raised in a data-loader worker, torch re-raises it in
    the main process with the worker's whole traceback as its message: only our one line is kept."""

    def __init__(self, message: str):
        if message.startswith("Caught BadImage"):  # torch's ExceptionWrapper.reraise
            last = [line for line in message.splitlines() if line.strip()][-1]
            at = last.find("BadImage: ")
            message = last[at + len("BadImage: "):] if at >= 0 else last
        super().__init__(message)


class VerificationFailed(DnaDeployError):
    """An exported model did not pass verification."""


class BudgetMissed(VerificationFailed):
    """The shipped network passed every other check but clearly measured over its latency budget:
    its own exit code, so that a script can tell a broken export from a slow one."""

    exit_code = 3


class InfeasibleBudget(DnaDeployError):
    """No architecture of the space satisfies the constraints."""


def suggest(value: str, choices: Iterable[str], n: int = 3) -> str:
    """'did you mean' text for an unknown name, or the list of valid choices."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(value, choices, n=n, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(repr(c) for c in close)}?"
    shown = ", ".join(choices[:12]) + (" ..." if len(choices) > 12 else "")
    return f"valid: {shown}"


def check_keys(mapping: dict, *, known, required=(), where: str, error=DnaDeployError) -> None:
    """A user-written mapping: name the first unknown key (with a suggestion) or missing one."""
    if not isinstance(mapping, dict):
        raise error(f"{where}: expected a mapping with keys {', '.join(sorted(known))}")
    unknown = sorted(set(mapping) - set(known))
    if unknown:
        raise error(f"{where}: unknown key {unknown[0]!r}; {suggest(unknown[0], known)}")
    for key in required:
        if key not in mapping:
            raise error(f"{where}: missing key {key!r}")
