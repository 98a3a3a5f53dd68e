"""One error hierarchy: the CLI turns these (and only these) into one line and exit code 1."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DnaDeployError(Exception):
    """A user-facing problem: bad input, missing file, absent runtime. Message says how to fix it."""


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


class VerificationFailed(DnaDeployError):
    """An exported model did not pass verification."""


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
