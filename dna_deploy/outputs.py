"""The one rule for what a command may write (docs/safety.md).

Before a command writes anything, each of its outputs goes through `check_output`, which refuses:

- a path inside a folder shipped with dna-deploy (latency_tables/, devices/, examples/ of the
  checkout or of the installed package), or a folder that holds one;
- one of the command's own inputs (and, for a folder that is replaced whole, a folder holding one);
- an existing file or folder that dna-deploy did not make as this kind of output. An existing
  output is recognised by its content (a table's `format`, an export's model.json, a pipeline's
  state file ...), never by its name; an empty folder or an empty file holds nothing to lose.

A refusal is an `OutputRefused` (one line, exit 1): nothing is moved, deleted or overwritten.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path

from dna_deploy.errors import DataError

SHIPPED = ("latency_tables", "devices", "examples")
MAX_SNIFF_BYTES = 64 * 2**20  # an output recognised by its JSON content is never this large


class OutputRefused(DataError):
    """An output would replace something dna-deploy must not touch."""


def shipped_roots() -> list[Path]:
    """Every shipped folder there is here: the checkout's and the installed package's."""
    pkg = Path(__file__).resolve().parent
    roots = []
    for name in SHIPPED:
        for candidate in (pkg / "_shipped" / name, pkg.parent / name):
            if candidate.is_dir():
                roots.append(candidate.resolve())
    return roots


def _resolve(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path)))).resolve()


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def is_shipped(path: str | os.PathLike) -> bool:
    """True for a shipped file or folder, or anything inside one."""
    p = _resolve(path)
    return any(_within(p, root) for root in shipped_roots())


# ------------------------------------------------------------ recognising our own outputs
def _json(path: Path):
    try:
        if path.stat().st_size > MAX_SNIFF_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _json_format(path: Path) -> str | None:
    d = _json(path)
    return d.get("format") if isinstance(d, dict) and isinstance(d.get("format"), str) else None


def _checkpoint_format(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):  # torch.save writes a zip: anything else is not ours
        return None
    from dna_deploy.errors import DnaDeployError
    from dna_deploy.io import load_checkpoint

    try:
        ckpt = load_checkpoint(path)
    except DnaDeployError:
        return None
    return ckpt.get("format") if isinstance(ckpt.get("format"), str) else None


def _is_search_result(path: Path) -> bool:
    d = _json(path)
    return isinstance(d, dict) and (d.get("format") == "dna-deploy-search/1" or {"exact", "results", "space"} <= set(d))


def _is_plot(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"\x89PNG") and b"Matplotlib" in head


def _is_pareto_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        return False
    return "arch" in header and "rating" in header


def _is_bundle_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("manifest.json")
            if info.file_size > MAX_SNIFF_BYTES:
                return False
            fmt = json.loads(z.read(info)).get("format", "")
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        return False
    return isinstance(fmt, str) and fmt.startswith("dna-deploy-bundle/")


def _is_verify_report(path: Path) -> bool:
    d = _json(path)
    return isinstance(d, dict) and {"folder", "arch", "artifacts", "passed"} <= set(d)


def _is_bundle_dir(path: Path) -> bool:
    fmt = _json_format(path / "manifest.json")
    return fmt is not None and fmt.startswith("dna-deploy-bundle/")


FILE_KINDS = {  # kind -> (what it is, whether an existing file is one of ours)
    "latency-table": ("a latency table", lambda p: _json_format(p) == "dna-deploy-lut/1"),
    "ratings": ("a rating table", lambda p: _json_format(p) == "dna-deploy-ratings/1"),
    "search-result": ("a search result", _is_search_result),
    "checkpoint": ("a dna-deploy checkpoint", lambda p: (_checkpoint_format(p) or "").startswith("dna-deploy-")),
    "plot": ("a plot dna-deploy drew", _is_plot),
    "pareto-csv": ("a Pareto front CSV", _is_pareto_csv),
    "bundle-zip": ("a profiling bundle", _is_bundle_zip),
    "verify-report": ("a verify report (verify.json)", _is_verify_report),
}
FOLDER_KINDS = {  # kind -> (what it is, whether an existing non-empty folder is one of ours)
    "export": ("an export folder (model.json)", lambda p: _json_format(p / "model.json") == "dna-deploy-export/1"),
    "supernet": ("a `train` folder (supernet.json)",
                 lambda p: any((p / f).exists() for f in ("supernet.json", "metrics.jsonl", "feature_cache"))
                 or any(p.glob("block[0-9]*.pt"))),
    "retrain": ("a `retrain` folder (model.pt)",
                lambda p: any((p / f).is_file() for f in ("model.pt", "retrain.ckpt.pt", "retrain_metrics.jsonl"))),
    "pipeline": ("a `run` folder (pipeline_state.json)", lambda p: (p / "pipeline_state.json").is_file()),
    "bundle": ("a profiling bundle (manifest.json)", _is_bundle_dir),
    "validate-work": ("a `profile validate` work folder (measurements.json)",
                      lambda p: any((p / f).is_file() for f in ("measurements.json", "artifacts.json"))),
}


def made_by_us(path: str | os.PathLike, kind: str) -> bool:
    """An existing output of this kind that dna-deploy wrote (or an empty one: nothing to lose)."""
    p = Path(path)
    if kind in FOLDER_KINDS:
        return p.is_dir() and (not any(p.iterdir()) or FOLDER_KINDS[kind][1](p))
    return p.is_file() and (p.stat().st_size == 0 or FILE_KINDS[kind][1](p))


# ------------------------------------------------------------ the rule
def check_output(path: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike | None] = (),
                 replaces: bool = False, allow_shipped: bool = False, what: str = "output") -> Path:
    """Refuse (OutputRefused) an output that is shipped, is one of `inputs`, or exists and is not
    a `kind` output of ours; also fail now, not after an epoch, when it cannot be written. A folder
    output that `replaces` (swapped in whole) may not hold an input either. Returns the path."""
    if kind not in FILE_KINDS and kind not in FOLDER_KINDS:
        raise ValueError(f"unknown output kind {kind!r}")
    folder = kind in FOLDER_KINDS
    path = Path(path)
    where = _resolve(path)
    if not allow_shipped:
        for root in shipped_roots():
            if _within(where, root) or (folder and _within(root, where)):
                raise OutputRefused(f"refusing to write {what} {path}: it is (or holds) {root.name}/ shipped with "
                                    "dna-deploy, which is never written; choose another path")
    for i in inputs:
        if i is None or not str(i) or not Path(i).exists():  # a preset or dataset name, a missing file
            continue
        src = _resolve(i)
        if src == where or ((folder and replaces) and _within(src, where)):
            raise OutputRefused(f"refusing to write {what} {path}: it {'is' if src == where else 'holds'} this "
                                f"command's input {i}; choose another path")
    _check_writable(path, folder=folder, what=what)
    if path.exists() and not made_by_us(path, kind):
        name, _ = (FOLDER_KINDS if folder else FILE_KINDS)[kind]
        held = "folder" if path.is_dir() else "file"
        raise OutputRefused(f"refusing to write {what} {path}: an existing {held} that is not {name} made by "
                            f"dna-deploy (nothing was changed); remove it yourself or choose another path")
    return path


def _check_writable(path: Path, *, folder: bool, what: str) -> None:
    if folder and path.exists() and not path.is_dir():
        raise OutputRefused(f"refusing to write {what} {path}: it is a file; give a folder")
    if not folder and path.is_dir():
        raise OutputRefused(f"refusing to write {what} {path}: it is a folder; give a file path")
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputRefused(f"refusing to write {what} {path}: {probe} is a file, so it cannot be created")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputRefused(f"refusing to write {what} {path}: {probe} is not writable")


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def safe_name(name, *, what: str) -> str:
    """A name read from a file (a device spec's, a space's) that becomes part of a file name: one
    plain path component, never `..`, a slash or an absolute path."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise DataError(f"{what} {str(name)[:80]!r} cannot name a file: use letters, digits, '.', '_', '+' and '-' "
                        "(no slashes, no '..')")
    return name
