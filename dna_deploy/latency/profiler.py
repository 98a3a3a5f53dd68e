"""Profiling: op models for every distinct layer of a space (or, at block granularity, every
candidate of every block as one model), timed on one runtime.

Two halves, so a target without torch can be profiled: `build_bundle` (host: builds one-layer
models with the export path and a manifest) and `measure_bundle` (target: only the runtime needed;
times them interleaved and writes the table). `profile` runs both on this machine.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dna_deploy import __version__
from dna_deploy.errors import DataError
from dna_deploy.host import GRAPH_RECIPE_KEY, graph_recipe, host_description, runtime_versions
from dna_deploy.io import exclusive_lock, fingerprint, read_json, write_json
from dna_deploy.latency.artifacts import block_job, build_artifacts, layer_job, share_conversions
from dna_deploy.latency.devices import DeviceSpec
from dna_deploy.latency.table import STATISTIC, LatencyTable, refuse_shipped, table_entries, table_file_name
from dna_deploy.progress import progress_bar
from dna_deploy.runtimes import require_runtime, runner_class
from dna_deploy.runtimes.base import (
    PROBE_TOLERANCE,
    QUIET_TOLERANCE,
    WARMUP_S,
    SpeedProbe,
    confirmed,
    quiet_rounds,
    quiet_stats,
    wait_for_spacing,
)
from dna_deploy.space import LayerSpec, SearchSpace

BUNDLE_FORMAT = "dna-deploy-bundle/1"
# Block bundles carry entries an older dna-deploy cannot read (a list of layers per model): they
# are format 2, which older versions refuse in one line instead of misreading.
BLOCK_BUNDLE_FORMAT = "dna-deploy-bundle/2"
BUNDLE_FORMATS = {"layer": BUNDLE_FORMAT, "block": BLOCK_BUNDLE_FORMAT}
# Timing protocol by granularity, where the caller gives none. A block table times 12x the models
# of a layer table (600 on tiny), so it takes 3 rounds and a 0.02 s warm-up per timed batch. Timed
# both ways from the same models (bench/latency_fidelity.py --block-warmups 0.1,0.02, 200 networks,
# 100 held out), 0.02 s took 45-54 s instead of 247-267 s per runtime, and every table calibrated
# to 100 % within +-10 % either way (RMSPE 0.45 / 0.79 / 0.31 % against 0.46 / 0.80 / 0.29 % on
# ONNX Runtime, LiteRT fp32 and int8). The layer table's 5 rounds x 0.25 s would take ~15 min.
# Extra rounds (for entries not yet confirmed by two rounds with quiet speed probes, or noisy): up
# to 6 after 5 base rounds, 9 after 3 (runtimes/base.SpeedProbe; bench/speed_probe.py replays
# these rules: on a machine slowed 75 % of the time both got 94-95 % of figures within +-10 % of
# the fast-state latency, against 80 % for 4 extra rounds without probes).
TIMING_DEFAULTS = {"layer": {"rounds": 5, "warmup_s": WARMUP_S, "max_extra_rounds": 6},
                   "block": {"rounds": 3, "warmup_s": 0.02, "max_extra_rounds": 9}}
MANIFEST = "manifest.json"
# Op models open at once while timing. Interleaving all of them spreads drift best, but each open
# model holds its session, packed weights and activations. Measured on dna-mbconv block models at
# 224x224: 5.5 MB per open ONNX Runtime session and 2.5 MB per LiteRT interpreter, for 2.2 MB files;
# its 6,264 block models would need 34 GB open at once on ONNX Runtime. So as many are opened at
# once as half the available memory holds at OPEN_MODEL_BYTES_PER_FILE_BYTE x the mean file size,
# and the rest are timed in slices: each slice opened, timed for all its rounds (interleaved within
# it) and closed. tiny's 603 block models (~40 KB each) fit in one slice anywhere.
OPEN_MODEL_BYTES_PER_FILE_BYTE = 3
MAX_OPEN_WITHOUT_FILES = 1024  # torch bundles rebuild modules from specs: no file size to go by


def _available_memory_bytes() -> int | None:
    """MemAvailable, capped by a container's memory limit (cgroup v2 or v1) where there is one."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        return None  # not Linux: no estimate, so no slicing by memory
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and available is not None:
            available = min(available, int(limit))
        break
    return available


def default_max_open(bundle: Path, entries: dict) -> int:
    """How many of a bundle's op models to keep open at once while timing (see above)."""
    files = [bundle / e["file"] for e in entries.values() if e.get("file")]
    if not files:
        return min(len(entries), MAX_OPEN_WITHOUT_FILES)
    sizes = [f.stat().st_size for f in files if f.is_file()]
    available = _available_memory_bytes()
    if not sizes or available is None:  # files all missing (opening says so), or no memory figure here
        return len(entries)
    per_model = OPEN_MODEL_BYTES_PER_FILE_BYTE * sum(sizes) / len(sizes) + 2**20
    return max(1, min(len(entries), int(0.5 * available / per_model)))


def default_table_path(device: DeviceSpec, space: SearchSpace, root: str | Path = "latency_tables", *,
                       granularity: str = "layer") -> Path:
    return Path(root) / table_file_name(device.name, space.name, granularity)


def shipped_table_for_host(device: DeviceSpec, space: SearchSpace, *,
                           granularity: str = "layer") -> tuple[Path | None, str | None]:
    """The shipped table for this device and space when it was measured on this very host with
    these runtime versions and is calibrated: (path, None); otherwise (None, why not)."""
    from dna_deploy.io import shipped_dir

    path = default_table_path(device, space, shipped_dir("latency_tables"), granularity=granularity)
    if not path.is_file():
        return None, f"none shipped for this device and space at {granularity} granularity"
    t = LatencyTable.load(path)
    if t.granularity != granularity:
        return None, f"shipped at {t.granularity} granularity, not {granularity}"
    if t.meta.get("space_fingerprint") != space.fingerprint:
        return None, "shipped for another definition of the space"
    if t.meta.get("device") != device.to_dict():
        return None, "shipped for another device spec"
    if not t.calibration:
        return None, "not calibrated"
    reasons = t.foreign_reasons()
    if reasons:
        return None, "measured on another host or runtime (" + "; ".join(reasons[:2]) + ")"
    return path, None


# ---------------------------------------------------------------- bundle (host side, needs torch)
def build_bundle(space: SearchSpace, device: DeviceSpec, out_dir: str | Path, *, show_progress: bool = True,
                 granularity: str = "layer", share: dict | None = None) -> Path:
    """One op model per distinct layer (or per block candidate), plus a manifest. Resumable:
    existing op models are kept. Slow conversions (LiteRT) run in parallel worker processes.
    `share`: convert together with other precisions (artifacts.share_conversions)."""
    # Only the converters are needed here (they say which extra is missing); TensorRT engines and
    # GPU sessions are built on the target from the bundle's ONNX models.
    cls = runner_class(device.runtime)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    models = table_entries(space, granularity)  # checks the granularity
    manifest = {"format": BUNDLE_FORMATS[granularity], "space": space.name, "space_fingerprint": space.fingerprint,
                "body_fingerprint": space.body_fingerprint,
                "space_definition": space.to_dict(), "device": device.to_dict(), "tool_version": __version__,
                "graph_recipe": graph_recipe(device.runtime, device.op_resolver) or None, "granularity": granularity, "entries": {}}
    if manifest_path.is_file():
        old = read_json(manifest_path, what="bundle manifest")
        if old.get("space_fingerprint") == space.fingerprint and old.get("device") == device.to_dict() \
                and old.get("graph_recipe") == manifest["graph_recipe"] \
                and old.get("granularity", "layer") == granularity:  # op models built another way are rebuilt
            manifest["entries"] = {k: v for k, v in old.get("entries", {}).items()
                                   if v.get("file") is None or (out_dir / v["file"]).is_file()}
    shapes = {key: [device.batch, specs[0].in_ch, specs[0].in_hw, specs[0].in_hw] for key, specs in models.items()}
    with progress_bar(show_progress) as bar:
        task = bar.task(f"op models ({device.runtime}, {granularity}s)", len(models))

        last_write = [0.0]

        def record(key: str, artifact: str | None) -> None:
            specs = models[key]
            layers = {"spec": asdict(specs[0])} if key == specs[0].key else {"specs": [asdict(s) for s in specs]}
            manifest["entries"][key] = {"file": Path(artifact).name if artifact else None, "input_shape": shapes[key],
                                        **layers}
            # saved for a resume at most once a second: rewriting it after each of thousands of block
            # models would write its size squared; a kill loses at most a second of models
            if time.monotonic() - last_write[0] >= 1.0:
                write_json(manifest_path, manifest)
                last_write[0] = time.monotonic()
            bar.advance(task, info=specs[0].kind)

        todo = [(i, key) for i, key in enumerate(models) if key not in manifest["entries"]]
        bar.advance(task, len(models) - len(todo))
        if not cls.artifact_suffix:  # torch rebuilds modules from the spec on the target
            for _, key in todo:
                record(key, None)
        else:
            def job(i: int, key: str) -> dict:
                specs, where = models[key], dict(runtime=device.runtime, precision=device.precision, work_dir=out_dir,
                                                 name=f"op{i:04d}", op_resolver=device.op_resolver)
                if key == specs[0].key:  # one layer
                    return share_conversions(layer_job(asdict(specs[0]), shapes[key], **where), share)
                return share_conversions(block_job([asdict(s) for s in specs], shapes[key], **where), share)

            build_artifacts([(key, job(i, key)) for i, key in todo], slow=cls.slow_to_prepare, on_done=record)
    write_json(manifest_path, manifest)
    return out_dir


# ---------------------------------------------------------------- measure (target side, no torch needed)
def _open_runner(cls, bundle: Path, entry: dict, device: DeviceSpec):
    if entry["file"] is None:  # torch runtime: build the module here
        from dna_deploy.nn.modules import build_block, build_layer

        try:
            module = (build_layer(LayerSpec(**entry["spec"])) if "spec" in entry else
                      build_block([LayerSpec(**s) for s in entry["specs"]])).eval()
        except (TypeError, ValueError, KeyError) as e:  # a forged manifest's layer spec
            raise DataError(f"{bundle}: a layer spec of the manifest is not valid ({str(e)[:120]})") from None
        return cls(module, threads=device.threads, device=device.device, precision=device.precision,
                   input_shape=entry["input_shape"], op_resolver=device.op_resolver).activate()
    return cls(bundle / entry["file"], threads=device.threads, device=device.device, precision=device.precision,
               op_resolver=device.op_resolver).activate()


def bundle_versions(manifest: dict, runtime: str) -> dict:
    """The runtime's package versions here, with the graph recipe the bundle's op models were
    built with (not this code's): a table says which graphs it timed."""
    versions = {k: v for k, v in runtime_versions(runtime).items() if k != GRAPH_RECIPE_KEY.get(runtime)}
    return {**versions, **(manifest.get("graph_recipe") or {})}


# Bounds on what a bundle may hold, checked before anything is unpacked or allocated: dna-mbconv's
# block bundle (the largest made here) has 6,264 models of ~2.2 MB and inputs of 1x3x224x224.
MAX_BUNDLE_MEMBERS = 100_000
MAX_MEMBER_BYTES = 2**31
MAX_BUNDLE_BYTES = 64 * 2**30
MAX_COMPRESSION_RATIO = 200  # model files compress a few times; a zip bomb a thousand times
MAX_INPUT_ELEMENTS = 2**28  # one float32 input of 1 GiB


def check_manifest(manifest, where) -> dict:
    """A bundle manifest read from a file: the keys measuring needs, of the right types, and
    bounded numbers, so a forged or broken one is one clear error and never a traceback or an 80 GiB
    input. File names are plain names inside the bundle."""
    from dna_deploy.outputs import safe_name

    if not isinstance(manifest, dict) or manifest.get("format") not in BUNDLE_FORMATS.values():
        raise DataError(f"{where} is not a dna-deploy profiling bundle (make one with `dna-deploy profile bundle`)")
    granularity = manifest.get("granularity", "layer")
    if granularity not in TIMING_DEFAULTS or manifest["format"] != BUNDLE_FORMATS[granularity]:
        raise DataError(f"{where}: bundle format {manifest['format']!r} with granularity {granularity!r} is not one "
                        "this version makes; rebuild it with `dna-deploy profile bundle`")
    for key, kind in (("space", str), ("space_fingerprint", str), ("device", dict), ("entries", dict)):
        if not isinstance(manifest.get(key), kind):
            raise DataError(f"{where}: the bundle manifest lacks a valid {key!r}; rebuild it with `dna-deploy profile bundle`")
    safe_name(manifest["space"], what=f"{where}: space name")
    DeviceSpec.from_dict(manifest["device"], source=f"{where}: device")  # it names the table: checked before unpacking
    entries = manifest["entries"]
    if not entries or len(entries) > MAX_BUNDLE_MEMBERS:
        raise DataError(f"{where}: the bundle manifest lists {len(entries)} op models (1 to {MAX_BUNDLE_MEMBERS})")
    for k, e in entries.items():
        shape = e.get("input_shape") if isinstance(e, dict) else None
        if not (isinstance(shape, list) and 1 <= len(shape) <= 5
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
                and math.prod(shape) <= MAX_INPUT_ELEMENTS):
            raise DataError(f"{where}: entry {str(k)[:60]!r} has input_shape {str(shape)[:80]}; expected 1 to 5 "
                            f"positive sizes of at most {MAX_INPUT_ELEMENTS:,} elements in all")
        f = e.get("file")
        if f is not None:
            safe_name(f, what=f"{where}: entry {str(k)[:60]!r} file")
        elif not isinstance(e.get("spec"), dict) and not (isinstance(e.get("specs"), list)
                                                           and all(isinstance(x, dict) for x in e["specs"])):
            raise DataError(f"{where}: entry {str(k)[:60]!r} has neither a model file nor layer specs")
    return manifest


def unpack_bundle(zip_path: str | Path, dest: str | Path | None = None) -> Path:
    """A bundle .zip unpacked into `dest` (default: beside it, without .zip). Its manifest is read
    and checked first, then every member's size, count and compression ratio, so a hostile zip
    writes nothing; only the files the manifest names are unpacked, into a temporary folder swapped
    in when complete (a failure leaves nothing behind). `dest` may not be a folder dna-deploy did
    not unpack (outputs.check_output)."""
    import shutil
    import tempfile
    import zipfile

    from dna_deploy.outputs import check_output

    zip_path = Path(zip_path)
    dest = Path(dest) if dest is not None else zip_path.with_suffix("")
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise DataError(f"bundle {zip_path} is not a readable zip file ({str(e)[:100]})") from None
    with z:
        infos = z.infolist()
        if len(infos) > MAX_BUNDLE_MEMBERS + 1:
            raise DataError(f"bundle {zip_path} holds {len(infos):,} files (at most {MAX_BUNDLE_MEMBERS:,})")
        by_name = {i.filename: i for i in infos}
        info = by_name.get(MANIFEST)
        if info is None:
            raise DataError(f"bundle {zip_path} has no {MANIFEST}: not a dna-deploy profiling bundle")
        if info.file_size > 256 * 2**20:
            raise DataError(f"bundle {zip_path}: {MANIFEST} is {info.file_size:,} bytes, too large for a manifest")
        try:
            manifest = json.loads(_read_member(z, info))
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, RuntimeError) as e:
            raise DataError(f"bundle {zip_path}: {MANIFEST} is not valid JSON ({str(e)[:100]})") from None
        check_manifest(manifest, f"bundle {zip_path}")
        wanted = [MANIFEST] + sorted({e["file"] for e in manifest["entries"].values() if e.get("file")})
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise DataError(f"bundle {zip_path} lacks {len(missing)} op model files the manifest names ({missing[0]} ...)")
        total = 0
        for n in wanted:
            i = by_name[n]
            total += i.file_size
            if i.file_size > MAX_MEMBER_BYTES or (i.file_size > 2**20 and i.file_size > MAX_COMPRESSION_RATIO * max(1, i.compress_size)):
                raise DataError(f"bundle {zip_path}: {n} unpacks to {i.file_size:,} bytes from {i.compress_size:,}; "
                                "not a bundle dna-deploy made (refused before unpacking anything)")
        if total > MAX_BUNDLE_BYTES or total > shutil.disk_usage(dest.parent if dest.parent.exists() else Path.cwd()).free:
            raise DataError(f"bundle {zip_path} unpacks to {total:,} bytes: more than this disk has free or "
                            f"{MAX_BUNDLE_BYTES:,}; refused before unpacking anything")
        check_output(dest, kind="bundle", inputs=[zip_path], replaces=True, what="bundle folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpack-", dir=dest.parent))
        try:
            for n in wanted:
                (tmp / n).write_bytes(_read_member(z, by_name[n]))
            if dest.exists():  # an earlier unpacked bundle (check_output): swapped out, then removed
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
                dest.replace(old / "previous")
                tmp.replace(dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _read_member(z, info) -> bytes:
    """A zip member's bytes, never more than its header declares (a forged header cannot make it
    write more)."""
    with z.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise DataError(f"{info.filename} holds more bytes than its zip header declares; refused")
    return data


def measure_bundle(bundle_dir: str | Path, out_path: str | Path, *, threads: int | None = None,
                   warmup: int = 10, rounds: int | None = None, runs_per_round: int = 20, cv_threshold: float = 0.05,
                   max_extra_rounds: int | None = None, resume: bool = True, show_progress: bool = True,
                   seed: int = 0, warmup_s: float | None = None, max_open: int | None = None) -> LatencyTable:
    """Time every op model of a bundle, interleaved round by round so drift spreads evenly. An
    entry's statistics come from its quiet rounds (runtimes/base.quiet_rounds: rounds slowed by
    something else on the machine are left out); entries whose fastest round no other round backs
    (both timed while the machine's speed probe was quiet: runtimes/base.confirmed), or whose quiet
    spread (robust CV) stays above cv_threshold, get extra rounds. Saves progress every round.
    Each op model warms up for `warmup_s` seconds before each of its timed batches (Runner.time).
    rounds, warmup_s and max_extra_rounds default to TIMING_DEFAULTS for the bundle's granularity. At most `max_open`
    models are open at once (default: what half the available memory holds, default_max_open);
    more are timed slice by slice."""
    bundle = Path(bundle_dir)
    manifest = check_manifest(read_json(bundle / MANIFEST, what="bundle manifest"), str(bundle))
    granularity = manifest.get("granularity", "layer")
    defaults = TIMING_DEFAULTS[granularity]
    rounds = defaults["rounds"] if rounds is None else rounds
    warmup_s = defaults["warmup_s"] if warmup_s is None else warmup_s
    max_extra_rounds = defaults["max_extra_rounds"] if max_extra_rounds is None else max_extra_rounds
    device = DeviceSpec.from_dict(manifest["device"])
    if threads is not None:
        device = DeviceSpec(**{**device.to_dict(), "threads": threads})
    cls = require_runtime(device.runtime, device.device)
    entries: dict = manifest["entries"]
    if max_open is not None and max_open < 1:
        raise DataError(f"max_open must be at least 1 (got {max_open})")
    settings = {"warmup": warmup, "rounds": rounds, "runs_per_round": runs_per_round, "cv_threshold": cv_threshold,
                "max_extra_rounds": max_extra_rounds, "warmup_s": warmup_s, "quiet_tolerance": QUIET_TOLERANCE,
                "probe_tolerance": PROBE_TOLERANCE}
    out_path = Path(out_path)
    with exclusive_lock(out_path, what="profile run"):
        return _measure_locked(bundle, manifest, device, cls, entries, settings, out_path, resume=resume,
                               show_progress=show_progress, seed=seed, max_open=max_open)


def _measure_locked(bundle, manifest, device, cls, entries, settings, out_path, *, resume, show_progress, seed,
                    max_open) -> LatencyTable:
    # the graph recipe too: a partial profile of op models built another way is not resumed
    run_id = fingerprint({"entries": sorted(entries), "device": device.to_dict(), "settings": settings,
                          "graph_recipe": manifest.get("graph_recipe")})
    partial_path = out_path.with_name(out_path.name + ".partial")
    keys, rounds = sorted(entries), settings["rounds"]
    part = read_json(partial_path, what="partial profile") if resume and partial_path.is_file() else {}
    if part.get("run_id") != run_id:
        part = {}
    if max_open is None:  # a resumed run keeps its slices (free memory differs from run to run)
        max_open = part.get("slice_size") or default_max_open(bundle, entries)
    slices = [keys[i:i + max_open] for i in range(0, len(keys), max_open)]
    samples: dict[str, list[list[float]]] = {k: [] for k in entries}  # per entry, its rounds' timed runs
    probes: dict[str, list[float]] = {k: [] for k in entries}  # per entry, each round's speed probe
    slices_done = rounds_done = 0
    # a partial run sliced another way (an explicit --max-open) is started over: its rounds do not line up
    if part and part.get("slice_size", len(keys)) == len(slices[0]):
        samples.update({k: v for k, v in part["samples"].items() if k in samples})
        probes.update({k: v for k, v in part["probes"].items() if k in probes})
        slices_done, rounds_done = part.get("slices_done", 0), part["rounds_done"]

    def save_partial(slices_finished: int, rounds_finished: int) -> None:
        write_json(partial_path, {"run_id": run_id, "slice_size": len(slices[0]), "slices_done": slices_finished,
                                  "rounds_done": rounds_finished, "samples": samples, "probes": probes})

    progress_total = [rounds * len(keys)]
    speed = SpeedProbe.resumed(probes)  # one machine speed for the whole run, slices and resumes alike
    with progress_bar(show_progress) as bar:
        task = bar.task(f"timing ({device.runtime}, {len(keys)} ops"
                        + (f", {len(slices)} slices of {len(slices[0])})" if len(slices) > 1 else ")"), rounds * len(keys))
        bar.advance(task, rounds * sum(map(len, slices[:slices_done])) + min(rounds_done, rounds) * len(slices[slices_done])
                    if slices_done < len(slices) else rounds * len(keys))
        for si in range(slices_done, len(slices)):
            first_round = rounds_done if si == slices_done else 0
            _time_slice(slices[si], first_round, samples, probes, speed, bundle, entries, device, cls, bar, task, settings,
                        rng=random.Random(seed + si * 1000 + first_round), save=lambda r, si=si: save_partial(si, r),
                        progress_total=progress_total)
            save_partial(si + 1, 0)
    stats = {k: quiet_stats(v) for k, v in samples.items()}  # rounds slowed by something else left out
    table = LatencyTable(
        meta={"space": manifest["space"], "space_fingerprint": manifest["space_fingerprint"],
              "body_fingerprint": manifest.get("body_fingerprint"),
              "space_definition": manifest.get("space_definition"),
              "device": device.to_dict(), "runtime": device.runtime, "versions": bundle_versions(manifest, device.runtime),
              "host": host_description(device.device), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "tool_version": __version__, "timing": {**settings, "resumed_at_round": rounds_done,
                                                     **({"slices": len(slices), "resumed_at_slice": slices_done}
                                                        if len(slices) > 1 else {})},
              "speed_probe": speed.record(),  # the machine's full speed, for a later verify here to start from
              "granularity": manifest.get("granularity", "layer"),
              "statistic": STATISTIC, "units": "milliseconds per inference of one batch"},
        entries={k: {**stats[k].to_dict(), "cv": round(stats[k].cv, 4), "rounds": len(samples[k]),
                     "rounds_kept": len(quiet_rounds(samples[k])), "input_shape": entries[k]["input_shape"]}
                 for k in keys})
    table.save(out_path)
    partial_path.unlink(missing_ok=True)
    return table


def _time_slice(keys, first_round, samples, probes, speed, bundle, entries, device, cls, bar, task, settings, *, rng,
                save, progress_total: list[int]) -> None:
    """Open a slice's op models, time them round by round in a shuffled order each round (then extra
    rounds for the noisy ones), and close them. save(r) records the slice's progress after round r."""
    rounds, runs_per_round = settings["rounds"], settings["runs_per_round"]
    runners, inputs = {}, {}
    last_round_end: dict[str, float] = {}
    try:
        for k in keys:
            runners[k] = _open_runner(cls, bundle, entries[k], device)
            inputs[k] = np.random.default_rng(0).standard_normal(entries[k]["input_shape"]).astype(np.float32)
            # first runs (lazy initialisation); each timed batch warms up for warmup_s itself, so this
            # one need not: 600 block models x 0.25 s were 2.5 minutes of a block table's profile
            runners[k].time(inputs[k], warmup=settings["warmup"], runs=1, warmup_s=0.0)
        total_rounds = rounds + settings["max_extra_rounds"]
        for r in range(first_round, total_rounds):
            if r < rounds:
                todo = keys
            else:  # extra rounds only for noisy entries, or ones whose fastest round no other backs
                todo = [k for k in keys if not confirmed(samples[k], probes[k], speed)
                        or quiet_stats(samples[k]).cv > settings["cv_threshold"]]
                if not todo:
                    break
                progress_total[0] += len(todo)
                bar.update(task, total=progress_total[0])
            order = list(todo)
            rng.shuffle(order)
            for k in order:
                if r >= rounds:  # a few entries left: their rounds wait, so as not to share a slow phase
                    wait_for_spacing(last_round_end.get(k))
                timed, probe = runners[k].time_round(inputs[k], speed, warmup=3, runs=runs_per_round,
                                                     warmup_s=settings["warmup_s"])
                last_round_end[k] = time.monotonic()
                samples[k].append(timed)
                probes[k].append(probe)
                bar.advance(task)
            save(r + 1)
    finally:
        for rn in runners.values():
            rn.close()


def profile(space: SearchSpace, device: DeviceSpec, out_path: str | Path, *, work_dir: str | Path | None = None,
            show_progress: bool = True, force: bool = False, granularity: str = "layer", share: dict | None = None,
            **timing) -> LatencyTable:
    """Bundle + measure on this machine. The bundle folder is kept for resume (and reuse). `share`:
    op models converted together with other precisions (artifacts.share_conversions)."""
    out_path = Path(out_path)
    refuse_shipped(out_path, force=force)
    work = Path(work_dir) if work_dir else out_path.with_name(out_path.stem + ".bundle")
    build_bundle(space, device, work, show_progress=show_progress, granularity=granularity, share=share)
    return measure_bundle(work, out_path, show_progress=show_progress, **timing)
