"""A target is a place plus a way to reach it: this machine (`local`), a Linux board or server over
SSH (`ssh://user@host[:port]`), an Android phone over adb (`adb://SERIAL`). One interface for all
(Polygraphy's runners, one file per route): `identity()` says who the target is, read on the
target; `time_models()` times model files there and returns each model's raw rounds and speed
probes, from which the host computes the statistic with runtimes/base (quiet_stats, confirmed), as
it does for models timed here.

Results come back per model and round as they are timed and are kept, one JSON line each, in a
resume file on the host (`partial`), flushed and synced as each arrives; a line that does not
parse whole (the host was killed mid-write, the connection dropped mid-line) is not taken. A
dropped connection is reconnected and the run resumes with the rounds already back (they are sent
to the target, which continues each model from there).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

from dna_deploy.errors import DnaDeployError


class TargetError(DnaDeployError):
    """The target cannot be reached or cannot run what was asked; the message says what to do."""


# Packages a target reports (targets/runner.py identity); the rest of a table's versions (the
# exporters that shaped its graphs: onnx, onnx2tf, tensorflow) are the host's.
TARGET_PACKAGES = ("numpy", "onnxruntime", "ai-edge-litert", "tflite-runtime")
IDENTITY_KEYS = ("cpu", "cpu_flags_sha256", "cores", "machine", "os")


class Target(ABC):
    """Where models are timed. `url` names it as the user gave it (without options)."""

    url: str
    is_local: bool = False
    runtimes: tuple[str, ...] = ("onnxruntime", "litert")  # what it times (verify times only those there)

    @abstractmethod
    def identity(self) -> dict:
        """Who the target is, read there: host_description()'s fields (cpu, cpu_flags_sha256, cores,
        machine, os) and `versions` of the packages that time models there."""

    @abstractmethod
    def time_models(self, models: dict[str, Path], *, runtime: str, threads: int, op_resolver: str | None,
                    settings: dict, partial: Path, show_progress: bool = True,
                    label: str = "models") -> dict[str, dict]:
        """{key: {"rounds": [[ms, ...], ...], "probes": [ms, ...]}} for every model, timed on the
        target, interleaved round by round (settings: rounds, runs_per_round, warmup_s,
        warmup_runs, max_extra_rounds, spacing_s, quiet_tolerance, probe_tolerance, cv_threshold)."""

    def configure(self, device) -> None:
        """Take what the device spec says about reaching the hardware (a phone: its CPU mask and
        delegate); nothing for most targets."""

    # ---- what every target shares ----
    def host_description(self) -> dict:
        """The identity fields host.host_differences compares, as the target reports them."""
        ident = self.identity()
        return {k: ident.get(k) for k in IDENTITY_KEYS}

    def runtime_versions(self, runtime: str, op_resolver: str | None = None) -> dict:
        """What a table measured on this target depends on: the target's runtime packages, the
        host's exporters and graph recipe (host.runtime_versions with the target's versions)."""
        from dna_deploy.host import runtime_versions

        there = self.identity().get("versions") or {}
        out = runtime_versions(runtime, op_resolver)
        for k in TARGET_PACKAGES:
            if k in out or (k == "tflite-runtime" and runtime == "litert" and there.get(k)):
                out[k] = there.get(k)
        return out

    def record(self) -> dict:
        """What a table records about the route (the identity itself goes to meta.host)."""
        ident = self.identity()
        return {"url": self.url, **{k: ident[k] for k in ("python", "android", "node") if ident.get(k)}}


class LocalTarget(Target):
    """This machine: today's behaviour (measured in-process with dna_deploy's runners)."""

    url = "local"
    is_local = True

    def identity(self) -> dict:
        from dna_deploy.host import host_description, package_versions

        return {**host_description(), "versions": package_versions(*TARGET_PACKAGES)}

    def time_models(self, *args, **kwargs):
        raise NotImplementedError("local timing runs in-process (latency/profiler.py, latency/validate.py)")


# ---------------------------------------------------------------- the resume file (host side)
def read_partial(partial: Path, run_id: str, keys) -> dict[str, dict]:
    """Rounds already back for this run (same run_id), as written by append_result, by model:
    {key: {"rounds": [...], "probes": [...]}}. Whole lines only, each a round of a model of this
    run of the right form; a line cut short by a kill is not taken."""
    out = {k: {"rounds": [], "probes": []} for k in keys}
    if not partial.is_file():
        return out
    lines = partial.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        if json.loads(lines[0]).get("run_id") != run_id:
            return out
    except (ValueError, IndexError, AttributeError):
        return out
    for line in lines[1:]:
        try:
            r = json.loads(line)
        except ValueError:  # cut short by a kill: not taken
            continue
        if valid_round(r, keys):
            out[r["key"]]["rounds"].append(r["samples"])
            out[r["key"]]["probes"].append(r["probe"])
    return out


def valid_round(r, keys) -> bool:
    """One round of one model as the runner prints it: {key, samples: [ms, ...], probe: ms}."""
    def ms(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e9

    return (isinstance(r, dict) and r.get("key") in keys and isinstance(r.get("samples"), list) and r["samples"]
            and all(map(ms, r["samples"])) and ms(r.get("probe")))


def start_partial(partial: Path, run_id: str, keep: bool) -> None:
    if keep and partial.is_file():
        return
    partial.parent.mkdir(parents=True, exist_ok=True)
    with open(partial, "w", encoding="utf-8") as f:
        f.write(json.dumps({"run_id": run_id}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_result(partial: Path, result: dict) -> None:
    """One round of one model, one line, on disk before the next is read (a kill loses at most it)."""
    with open(partial, "a", encoding="utf-8") as f:
        f.write(json.dumps({k: result[k] for k in ("key", "samples", "probe")}) + "\n")
        f.flush()
        os.fsync(f.fileno())
