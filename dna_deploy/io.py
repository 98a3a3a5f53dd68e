"""Files are written atomically (temp file + rename) and read with clear errors; never pickles."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dna_deploy.errors import DataError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write next to the target then rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None and e.errno is not None:  # a full disk: the message names the file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DataError(f"{what} {path} is {size:,} bytes; dna-deploy's JSON files are at most {MAX_JSON_BYTES:,}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{what} {path} is corrupt or truncated ({str(e)[:200]}); delete it or regenerate it") from None
    except RecursionError:  # "[[[[...": nested deeper than any file of ours
        raise DataError(f"{what} {path} is nested too deeply to be a dna-deploy file") from None


MAX_JSON_BYTES = 2**30  # tables, ratings, manifests and reports: a few MB at most
MAX_STRUCTURED_BYTES = 16 * 2**20  # a pipeline, space or device file is a few KB
MAX_YAML_DEPTH = 64  # a settings file nests a few levels
MAX_YAML_ALIASES = 100  # anchors reused this often are a "billion laughs" bomb, not a settings file
MAX_YAML_NODES = 100_000  # values the document holds once every alias is expanded (a pipeline: a few hundred)


def read_structured(path: str | os.PathLike, *, what: str = "file") -> Any:
    """YAML, JSON or TOML by extension (YAML with safe_load only). Bounded before anything is
    built: the file's size, and a YAML file's aliases and the size they expand to (an alias bomb
    of 1 KB would otherwise take all memory when the value is used or printed)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_STRUCTURED_BYTES:
        raise DataError(f"{what} {path} is {size:,} bytes; a settings file is at most {MAX_STRUCTURED_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{what} {path} is not UTF-8 text (byte {e.start}); is it the right file?") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(text)
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        import yaml

        _check_yaml_expansion(text, path, what)
        return yaml.safe_load(text)
    except DataError:
        raise
    except Exception as e:  # parser errors of three libraries: report them as one kind, never the value
        raise DataError(f"{what} {path} cannot be parsed: {' '.join(str(e).split())[:200]}") from None


def _check_yaml_expansion(text: str, path: Path, what: str) -> None:
    """Count a YAML document's aliases, its nesting, and the nodes it holds once they are expanded,
    from its event stream (nothing is built), so a "billion laughs" file is refused in microseconds.
    libyaml's parser where installed (it refuses thousands of nested brackets at once; the pure
    Python one takes minutes over them)."""
    import yaml

    sizes: dict[str, int] = {}  # anchor -> expanded node count
    stack: list[list] = []  # open collections: [anchor, nodes so far]
    aliases = total = 0
    for ev in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        if isinstance(ev, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise DataError(f"{what} {path} uses more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                                "refused before expanding them")
            n = sizes.get(ev.anchor, 1)
        elif isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            stack.append([ev.anchor, 1])
            if len(stack) > MAX_YAML_DEPTH:
                raise DataError(f"{what} {path} nests more than {MAX_YAML_DEPTH} levels deep; not a settings file")
            continue
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, n = stack.pop()
            if anchor is not None:
                sizes[anchor] = n
        elif isinstance(ev, yaml.ScalarEvent):
            n = 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        else:
            continue
        if stack:
            stack[-1][1] += n
        else:
            total += n
        if n > MAX_YAML_NODES or total > MAX_YAML_NODES:
            raise DataError(f"{what} {path} expands to more than {MAX_YAML_NODES:,} values through its YAML aliases; "
                            "refused before expanding them")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    """Short stable hash of a JSON-serialisable object (settings, space definitions)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """torch.save to a temp file then rename; payload must be tensors and plain data only."""
    import io as _io

    import torch

    buf = _io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint") -> dict:
    """weights_only=True: a file a user hands us is never unpickled as arbitrary objects."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several kinds here; its hint to disable weights_only is never passed on
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            why = "it holds Python objects besides tensors and plain data, which dna-deploy never unpickles"
        else:
            why = "it is corrupt, truncated, or another kind of file"
        raise DataError(f"{what} {path} is not a dna-deploy checkpoint: {why}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what} {path} is not a dna-deploy checkpoint (it holds a {type(obj).__name__}, not a mapping)")
    return obj


def shipped_dir(name: str) -> Path:
    """A folder shipped with the tool (devices, latency_tables, examples), checkout or wheel."""
    pkg = Path(__file__).resolve().parent
    for candidate in (pkg / "_shipped" / name, pkg.parent / name):
        if candidate.is_dir():
            return candidate
    return pkg.parent / name


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike, *, what: str = "job"):
    """Hold `<target>.lock` for the duration, so two processes never write the same output (its
    resume files included). An OS lock: a killed holder releases it, so no stale lock survives."""
    import fcntl

    lock_path = Path(str(target) + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DataError(f"another {what} is writing {target} ({holder}); wait for it to finish or choose "
                            "another output") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        f.close()
