"""Verification of exported models: the same images through PyTorch and the target runtime.

Small pure functions over arrays (compare_outputs, accuracy) and one driver (verify_exports; one
folder: verify_export) that writes a JSON-serialisable report per folder with a pass/fail per
check. Element-wise closeness follows Polygraphy: an element fails only if it exceeds both the
absolute and the relative tolerance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError, suggest
from dna_deploy.io import sha256_file, write_json
from dna_deploy.latency.table import STATISTIC
from dna_deploy.runtimes.base import (
    MODEL_MAX_EXTRA_ROUNDS,
    MODEL_ROUNDS,
    QUIET_TOLERANCE,
    SpeedProbe,
    confirmed,
    quiet_round_indices,
    quiet_rounds,
    quiet_stats,
    time_in_rounds,
)


@dataclass(frozen=True)
class Tolerances:
    atol: float | None  # None: no element-wise check (int8)
    rtol: float | None
    min_cosine: float | None  # None: reported, not judged (int8 is judged by top-1 and accuracy)
    min_top1_agreement: float
    max_accuracy_drop_pts: float
    max_latency_error_pct: float | None = None  # None: latency vs LUT is reported, not judged


DEFAULT_TOLERANCES = {
    "fp32": Tolerances(atol=1e-4, rtol=1e-4, min_cosine=0.99999, min_top1_agreement=0.999, max_accuracy_drop_pts=0.1),
    "fp16": Tolerances(atol=1e-2, rtol=1e-2, min_cosine=0.9995, min_top1_agreement=0.99, max_accuracy_drop_pts=0.5),
    "int8": Tolerances(atol=None, rtol=None, min_cosine=None, min_top1_agreement=0.97, max_accuracy_drop_pts=1.0),
}


def compare_outputs(reference: np.ndarray, output: np.ndarray, *, atol: float | None, rtol: float | None) -> dict:
    ref, out = np.asarray(reference, np.float64), np.asarray(output, np.float64)
    if ref.shape != out.shape:
        raise DataError(f"output shapes differ: PyTorch {list(ref.shape)} vs exported {list(out.shape)}")
    diff = np.abs(ref - out)
    num = (ref * out).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1) + 1e-30
    r = {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
         "max_rel_error": float((diff / (np.abs(ref) + 1e-12)).max()),
         "rel_error_vs_range": float(diff.max() / (np.abs(ref).max() + 1e-12)),
         "cosine_min": float((num / den).min()), "cosine_mean": float((num / den).mean()),
         "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean())}
    if atol is not None:
        failing = (diff > atol) & (diff > rtol * np.abs(ref))
        r["elements_failing"] = int(failing.sum())
        r["elements"] = int(failing.size)
    return r


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def judge(stats: dict, tol: Tolerances) -> dict:
    """Each check: value, limit, pass."""
    checks = {
        "top1_agreement": {"value": stats["top1_agreement"], "limit": f">= {tol.min_top1_agreement}",
                           "pass": stats["top1_agreement"] >= tol.min_top1_agreement},
        "accuracy_drop_pts": {"value": stats["accuracy_drop_pts"], "limit": f"<= {tol.max_accuracy_drop_pts}",
                              "pass": stats["accuracy_drop_pts"] <= tol.max_accuracy_drop_pts},
    }
    if tol.min_cosine is not None:
        checks["cosine_min"] = {"value": stats["cosine_min"], "limit": f">= {tol.min_cosine}",
                                "pass": stats["cosine_min"] >= tol.min_cosine}
    if tol.atol is not None:
        checks["elementwise"] = {"value": f"{stats['elements_failing']} of {stats['elements']} elements off",
                                 "limit": f"atol {tol.atol}, rtol {tol.rtol}", "pass": stats["elements_failing"] == 0}
    if tol.max_latency_error_pct is not None and stats.get("latency_error_pct") is not None:
        checks["latency_vs_table"] = {"value": stats["latency_error_pct"], "limit": f"|x| <= {tol.max_latency_error_pct} %",
                                      "pass": abs(stats["latency_error_pct"]) <= tol.max_latency_error_pct}
    return checks


def budget_targets(budgets: dict[str, float] | None, tables=None) -> list[dict]:
    """Each latency budget's device ({device: ms}, a device spec's name or file) as what it holds an
    artifact to: the runtime and precision of the given table of that name, else of its device spec."""
    from dna_deploy.latency.devices import load_device

    out = []
    for name, ms in (budgets or {}).items():
        if not (isinstance(ms, (int, float)) and not isinstance(ms, bool) and math.isfinite(ms) and ms > 0):
            raise DataError(f"latency budget for {name}: {str(ms)[:40]} is not a positive number of milliseconds")
        table = next((t for t in tables or [] if t.name == name), None)
        if table is not None:
            runtime, precision = table.meta["runtime"], table.meta["device"]["precision"]
        else:
            spec = load_device(name)
            name, runtime, precision = spec.name, spec.runtime, spec.precision
        out.append({"device": name, "runtime": runtime, "precision": precision, "budget_ms": float(ms)})
    return out


def judge_budget(device: str, budget_ms: float, measured_ms: float, band_ms: tuple[float, float]) -> dict:
    """The measured statistic against a latency budget, within the noise band the measurement itself
    shows (band_ms: the lowest and highest 10th percentile of its quiet rounds, the lowest scaled
    by the rounds' speed probes (round_band); interference only adds time, so the fastest quiet
    round is the network's own speed). met: the measured figure is
    within the budget; met within noise: it is over, but the fastest round is not; missed: even the
    fastest round is over, a clear miss. `line` says it in one line."""
    over = 100 * (measured_ms - budget_ms) / budget_ms
    verdict = "met" if measured_ms <= budget_ms else "met within noise" if band_ms[0] <= budget_ms else "missed"
    return {"device": device, "budget_ms": budget_ms, "measured_ms": measured_ms,
            "band_ms": [float(band_ms[0]), float(band_ms[1])], "over_pct": over, "verdict": verdict,
            "met": verdict != "missed",
            "line": f"{device}: {measured_ms:.4g} ms measured, budget {budget_ms:.4g} ms ({over:+.0f} %)"}


def round_band(rounds: list[list[float]], probes: list[float] | None = None,
               fastest_probe_ms: float | None = None) -> tuple[float, float]:
    """The lowest and highest 10th percentile among a measurement's quiet rounds (its noise band).
    With each round's speed probe and the fastest probe this machine has shown (the tables', the
    job's), the lowest end is each round's figure scaled to the machine at that speed: a network
    confirmed in the search and timed by verify a minute later, while the host runs 1-2 % slower
    (the quickstart here: 0.287 ms measured against a 0.2858 ms budget it had met), is judged by
    the network, not by the host's state. A round is scaled down by at most QUIET_TOLERANCE. The
    highest end stays as measured."""
    kept = quiet_round_indices(rounds, QUIET_TOLERANCE)
    floors = [float(np.percentile(rounds[i], 10)) for i in kept]
    low = min(floors)
    if probes and fastest_probe_ms and np.isfinite(fastest_probe_ms):
        # a round in one of the host's slow phases (1.6x, runtimes/base.quiet_rounds) is not scaled by
        # all of it: at most by the quiet-round tolerance, so a clear miss timed while slowed stays one
        floor = 1 / (1 + QUIET_TOLERANCE)
        low = min([low, *(f * min(1.0, max(floor, fastest_probe_ms / probes[i])) for f, i in zip(floors, kept)
                          if i < len(probes) and probes[i])])
    return low, max(floors)


def _runner_for(artifact: dict, folder: Path, threads: int, op_resolver: str | None = None):
    from dna_deploy.runtimes import require_runtime

    cls = require_runtime(artifact["runtime"], "cuda" if artifact["runtime"] == "tensorrt" else "cpu")
    kw = {"layout": artifact["layout"].lower()} if artifact["runtime"] == "litert" else {}
    if op_resolver is not None and op_resolver in cls.op_resolvers:
        kw["op_resolver"] = op_resolver
    return cls(folder / artifact["path"], threads=threads, precision=artifact["precision"], **kw)


def _matching_table(tables, art: dict, space):
    """The latency table for this artifact's runtime and precision and this space, if given."""
    for t in tables or []:
        if t.meta.get("runtime") == art["runtime"] and t.meta["device"].get("precision") == art["precision"] \
                and t.fits(space):
            return t
    return None


def precision_advice(artifacts: list[dict]) -> list[str]:
    """Plain words when a lower precision runs slower than fp32 on the same runtime here."""
    notes = []
    def ms(a):  # one statistic for both sides of a ratio: the 10th percentile every timing records
        return a["stats"]["latency_ms"][STATISTIC]

    fp32 = {a["runtime"]: ms(a) for a in artifacts if a["precision"] == "fp32"}
    for a in artifacts:
        base = fp32.get(a["runtime"])
        if a["precision"] != "fp32" and base:
            ratio = ms(a) / base
            if ratio > 1:
                kernels = f" with {a['op_resolver']} kernels" if a.get("op_resolver") else ""
                notes.append(f"{a['runtime']} {a['precision']} is {ratio:.1f}x slower than fp32 here{kernels}; ship fp32"
                             + (" (or try LiteRT's builtin kernels: export and verify with --op-resolver builtin)"
                                if a["runtime"] == "litert"
                                and a.get("op_resolver") in (None, "xnnpack") else ""))
    return notes


@dataclass
class _Timing:
    """One artifact's latency measurement, kept open until every artifact of the job is timed."""
    folder: Path
    artifact: dict
    resolver: str | None
    threads: int
    x: np.ndarray  # one batch of validation images
    rounds: list
    probes: list
    cap: int  # most rounds in all


@dataclass
class _Checked:
    """One artifact with its outputs checked, waiting for its latency verdict (timing.artifact)."""
    tolerances: Tolerances
    stats: dict
    intact: bool  # its sha256 matches model.json
    timing: _Timing


@dataclass
class _Folder:
    """One export folder, checked and loaded before anything is timed: its network, the images and
    PyTorch's outputs on them, the artifacts to verify, and its report so far."""
    path: Path
    space: object
    arch: object
    x: np.ndarray
    y: np.ndarray
    reference: np.ndarray
    artifacts: list[dict]
    report: dict
    checked: list[_Checked] = field(default_factory=list)


def verify_export(folder: str | Path, **kwargs) -> dict:
    """Verify one export folder; takes verify_exports' keyword arguments and returns its report."""
    return verify_exports([folder], **kwargs)[0]


def verify_exports(folders: list[str | Path], *, data: str | None = None, tables: list | None = None,
                   max_images: int | None = None, threads: int = 1, overrides: dict | None = None,
                   only: list[str] | None = None, show_progress: bool = True, op_resolver: str | None = None,
                   max_extra_rounds: int | None = None, budgets: dict[str, float] | None = None,
                   latency_advisory: bool = False, target=None) -> list[dict]:
    """Run PyTorch and every exported artifact of each folder on the validation images; write each
    folder's verify.json. Every folder is checked (files, weights, data) before anything is timed,
    so a bad folder costs no measurement and leaves no half-written report.

    Latency is measured with the kernels the matching table was profiled with (its device spec's
    op_resolver), else `op_resolver`, else the ones the export shaped its graph for. `notes` says in
    words when no table matched, when a table comes from another host, when the kernels are not
    the ones the graph was shaped for, and when int8/fp16 is slower than fp32.

    The folders are one job for the machine's speed probe (runtimes/base.SpeedProbe): it starts
    from the fastest probe recorded by the given tables profiled on this machine, learns over every
    artifact's rounds, and once all are timed every artifact's confirmation is judged again against
    the fastest probe seen; an artifact it no longer holds is timed again (up to its round cap).
    Why: an artifact judged as soon as it was timed, wholly in a slow phase, was judged against
    that phase (make demo, 2026-12-01: ONNX Runtime 69 % over its prediction, 'confirmed').

    `budgets` ({device: ms}): each artifact of a budgeted device's runtime and precision is held to
    its budget (judge_budget); a clear miss fails its `latency_budget` check, or with
    `latency_advisory` only says so in a note. Each report's `budgets` lists the verdicts.

    A remote `target` (targets/): outputs are checked here, latency is measured there
    (_time_on_target), against the target's own speed probe, and tables are held to its identity."""
    from dna_deploy.host import LITERT_OP_RESOLVERS
    from dna_deploy.progress import progress_bar

    if op_resolver is not None and op_resolver not in LITERT_OP_RESOLVERS:
        raise DataError(f"op resolver {op_resolver!r}: {suggest(op_resolver, LITERT_OP_RESOLVERS)}")
    held_to = budget_targets(budgets, tables)  # the budgets, by runtime and precision
    if target is not None and not target.is_local and only is None:  # what the target can run (a phone: LiteRT)
        only = list(target.runtimes)
    loaded = [_load_folder(Path(f), data=data, max_images=max_images, only=only) for f in folders]
    speed = SpeedProbe.seeded([t.speed_probe_here() for t in tables or []])
    seed_ms = speed.fastest_ms
    with progress_bar(show_progress) as bar:
        for f in loaded:
            _check_artifacts(f, bar, tables=tables, threads=threads, overrides=overrides,
                             op_resolver=op_resolver, max_extra_rounds=max_extra_rounds)
        if target is not None and not target.is_local:
            speed, seed_ms = _time_on_target(target, [c.timing for f in loaded for c in f.checked], show_progress), None
        else:
            time_interleaved([c.timing for f in loaded for c in f.checked], speed, bar)
    probe = {"fastest_ms": speed.fastest_ms, "from_tables_ms": seed_ms if seed_ms and seed_ms < float("inf") else None,
             "tolerance": speed.tolerance, **({"target": target.url} if target is not None and not target.is_local else {})}
    held = {(a["runtime"], a["precision"]) for f in loaded for a in f.artifacts}
    unheld = [f"latency budget {t['budget_ms']:g} ms for {t['device']}: no artifact verified here runs on {t['runtime']} "
              f"{t['precision']}; not checked (export for it and verify that folder too)"
              for t in held_to if (t["runtime"], t["precision"]) not in held]
    return [_finish(f, speed, tables, probe, held_to=held_to, advisory=latency_advisory, unheld=unheld, where=target)
            for f in loaded]


def _time_on_target(target, timings: list[_Timing], show_progress: bool) -> SpeedProbe:
    """Every artifact timed on the target as verify times here (MODEL_ROUNDS rounds of 20 runs,
    then extra rounds while unconfirmed, up to each one's cap), grouped by what runs them; the
    target's speed probe over all of them."""
    import tempfile

    from dna_deploy.latency.devices import DeviceSpec
    from dna_deploy.latency.on_target import runner_settings
    from dna_deploy.runtimes.base import WARMUP_S

    groups: dict[tuple, list[_Timing]] = {}
    for t in timings:
        groups.setdefault((t.artifact["runtime"], t.artifact["precision"], t.threads, t.resolver, t.cap), []).append(t)
    with tempfile.TemporaryDirectory(prefix="dna-deploy-verify-") as tmp:
        for i, ((runtime, precision, threads, resolver, cap), ts) in enumerate(groups.items()):
            target.configure(DeviceSpec(name="verify", runtime=runtime, precision=precision, threads=threads,
                                        op_resolver=resolver))
            settings = runner_settings(rounds=MODEL_ROUNDS, runs_per_round=20, warmup_s=WARMUP_S,
                                       max_extra_rounds=max(0, cap - MODEL_ROUNDS))
            results = target.time_models({str(j): t.folder / t.artifact["path"] for j, t in enumerate(ts)},
                                         runtime=runtime, threads=threads, op_resolver=resolver, settings=settings,
                                         partial=Path(tmp) / f"{i}.jsonl", show_progress=show_progress, label="artifacts")
            for j, t in enumerate(ts):
                t.rounds[:], t.probes[:] = results[str(j)]["rounds"], results[str(j)]["probes"]
    return SpeedProbe.resumed([t.probes for t in timings])


def _load_folder(folder: Path, *, data, max_images, only) -> _Folder:
    """Everything that can be wrong with a folder, found before any timing; PyTorch's outputs."""
    import torch

    from dna_deploy.data import load_data, stack
    from dna_deploy.deploy.export import load_export
    from dna_deploy.distill.checkpoints import load_model
    from dna_deploy.outputs import check_output

    side = load_export(folder)
    check_output(folder / "verify.json", kind="verify-report", what="verify report")  # written once all are timed
    weights = folder / side["source_weights"]["path"]
    if not weights.is_file() or sha256_file(weights) != side["source_weights"]["sha256"]:
        raise DataError(f"{weights} is missing or changed since export (its sha256 no longer matches model.json): "
                        "the reference outputs would not be the exported network's; export again")
    space, arch, net, ckpt = load_model(weights)
    if str(arch) != side["arch"] or side.get("space_fingerprint") not in (None, space.fingerprint):
        # the report names the network verified: never one model.json claims but the weights are not
        raise DataError(f"{folder / 'model.json'} names architecture {side['arch'][:200]!r} (space {side.get('space')!r}), "
                        f"but its weights {weights.name} are {str(arch)[:200]!r} (space {space.name!r}): the folder was "
                        "edited or mixed up; export again")
    data_spec = data or side.get("trained_on")
    if data_spec is None:
        raise DataError("verify needs labelled data: --data mnist, fashion-mnist or a folder with train/ and val/")
    d = load_data(data_spec, space.input_size)
    trained_fp = ckpt.get("data_fingerprint")
    if trained_fp is not None and d.fingerprint != trained_fp:
        raise DataError(f"--data {data_spec} is not the data the model was trained on (split fingerprint {d.fingerprint} "
                        f"vs {trained_fp}): its validation split could hold the model's training images. "
                        f"Verify on the model's own data ({side.get('trained_on')})")
    x, y = stack(d.val, max_images)
    if list(x.shape[1:]) != side["input"]["shape"][1:]:
        raise DataError(f"data gives {list(x.shape[1:])} images; the model takes {side['input']['shape'][1:]}")
    arts = [a for a in side["artifacts"] if only is None or a["path"] in only or a["runtime"] in only]
    for art in arts:
        if not (folder / art["path"]).is_file():
            raise DataError(f"{folder / art['path']} is listed in model.json but missing; export again")
    with torch.no_grad():
        ref = torch.cat([net(x[i:i + 256]) for i in range(0, len(x), 256)]).numpy()
    report = {"folder": str(folder), "arch": side["arch"], "data": data_spec, "data_fingerprint": d.fingerprint,
              "split": "val", "images": len(x), "pytorch_accuracy": accuracy(ref, y.numpy()), "artifacts": [],
              "notes": [], "passed": True}
    return _Folder(folder, space, arch, x.numpy(), y.numpy(), ref, arts, report)


def _check_artifacts(f: _Folder, bar, *, tables, threads, overrides, op_resolver, max_extra_rounds) -> None:
    """Outputs and accuracy of every artifact against PyTorch; its latency, still to time."""
    folder, report, x_np, y_np, ref = f.path, f.report, f.x, f.y, f.reference
    acc_ref = report["pytorch_accuracy"]
    cap = MODEL_ROUNDS + (MODEL_MAX_EXTRA_ROUNDS if max_extra_rounds is None else max_extra_rounds)
    task = bar.task(f"verifying {folder.name}", len(f.artifacts) * len(x_np))
    for art in f.artifacts:
        intact = sha256_file(folder / art["path"]) == art["sha256"]
        tol = DEFAULT_TOLERANCES[art["precision"]]
        if overrides:  # atol/rtol only where the precision has an element-wise check (not int8)
            tol = replace(tol, **{k: v for k, v in overrides.items() if v is not None
                                  and not (k in ("atol", "rtol") and tol.atol is None)})
        table = _matching_table(tables, art, f.space)
        # the kernels: the table's (its latency is what is compared), else asked for, else the
        # ones the export shaped its graph for (artifacts from before that field: XNNPACK's)
        if table is not None:  # a table profiled with the default kernels records none: XNNPACK's
            resolver = table.meta["device"].get("op_resolver") or "xnnpack"
        else:
            resolver = op_resolver or art.get("op_resolver")
        if art["runtime"] != "litert":
            resolver = None
        elif (resolver or "xnnpack") != art.get("op_resolver", "xnnpack"):
            report["notes"].append(f"{art['path']}: its graph is shaped for LiteRT's {art.get('op_resolver', 'xnnpack')} "
                                   f"kernels but runs here with the {resolver} kernels; export again with "
                                   f"--op-resolver {resolver}")
        with _runner_for(art, folder, threads, resolver) as runner:
            batch = runner.input_shape[0] if runner.input_shape else 1
            outs = []
            for i in range(0, len(x_np), batch):
                chunk = x_np[i:i + batch]
                if len(chunk) < batch:  # static batch: pad the last chunk
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
                outs.append(runner.infer(chunk)[:len(x_np[i:i + batch])])
                bar.advance(task, len(x_np[i:i + batch]))
            out = np.concatenate(outs).reshape(len(x_np), -1)
            stats = compare_outputs(ref, out, atol=tol.atol, rtol=tol.rtol)
            stats["accuracy"] = accuracy(out, y_np)
            stats["accuracy_drop_pts"] = 100 * (acc_ref - stats["accuracy"])
        # timed once every artifact of the job is checked, all in turn (time_interleaved)
        timing = _Timing(folder, art, resolver, threads, x_np[:batch], [], [], cap)
        f.checked.append(_Checked(tol, stats, intact, timing))


def time_interleaved(timings: list[_Timing], speed: SpeedProbe, bar, *, rounds: int = MODEL_ROUNDS,
                     after_pass=None) -> None:
    """Time every artifact, in place, one round of each in turn (runtimes/base.time_in_rounds: the
    same warm-up, runs and speed probes as the tables), so that a slow phase of the machine hits all
    of them alike: `rounds` each, then more for each whose latency is not confirmed against the
    fastest probe seen over all of them (runtimes/base.confirmed), until it is or at its cap (a
    faster probe found later can undo an earlier confirmation; every pass adds rounds, so it ends).
    Timings that already hold rounds (a resumed job) are continued. verify and the search's
    confirmation (deploy/confirm.py) both time with this, so their figures are alike.
    after_pass(): called after each pass, so that a caller can save what was timed."""
    import contextlib
    import time

    from dna_deploy.runtimes.base import wait_for_spacing

    def pending(t: _Timing) -> bool:
        return len(t.rounds) < rounds or (not confirmed(t.rounds, t.probes, speed) and len(t.rounds) < t.cap)

    ended: dict[int, float] = {}
    with contextlib.ExitStack() as stack:
        runners: dict[int, object] = {}
        total = sum(max(0, rounds - len(t.rounds)) for t in timings)  # a resumed timing has rounds already
        task = bar.task(f"timing {len(timings)} artifact(s) in turn", total)
        while todo := [i for i, t in enumerate(timings) if pending(t)]:
            for i in todo:
                t = timings[i]
                if i not in runners:
                    runners[i] = stack.enter_context(_runner_for(t.artifact, t.folder, t.threads, t.resolver))
                if len(t.rounds) >= rounds:  # an extra round: spaced from the last (a slow phase lasts seconds)
                    total += 1
                    bar.update(task, total=total)
                    wait_for_spacing(ended.get(i))
                elif len(todo) == 1 and t.rounds:
                    time.sleep(0.2)  # time_in_rounds' pause between a lone model's rounds
                time_in_rounds(runners[i], t.x, speed=speed, rounds=len(t.rounds) + 1, max_extra_rounds=0,
                               resume=(t.rounds, t.probes))
                ended[i] = time.monotonic()
                bar.advance(task)
            if after_pass is not None:
                after_pass()


def _finish(f: _Folder, speed: SpeedProbe, tables, probe: dict, *, held_to: list[dict] = (), advisory: bool = False,
            unheld: list[str] = (), where=None) -> dict:
    """Latency verdicts against the tables and budgets, every check, notes; writes the folder's
    verify.json. `probe`: the job's speed probe (its fastest, and the fastest the tables recorded)."""
    report = {**f.report, "speed_probe": probe, "budgets": [], "latency_advisory": advisory}
    report["notes"] = list(report["notes"]) + list(unheld)
    for c in f.checked:
        tol, stats, intact, t = c.tolerances, c.stats, c.intact, c.timing
        art = t.artifact
        timing = quiet_stats(t.rounds)
        # confirmed: two quiet rounds, both timed while the machine's speed probe was quiet
        stats["latency_ms"] = {**timing.to_dict(), "rounds": len(t.rounds), "rounds_kept": len(quiet_rounds(t.rounds)),
                               # the quiet rounds' lowest (scaled by their speed probes) and highest p10
                               "band_ms": list(round_band(t.rounds, t.probes, speed.fastest_ms)),
                               "confirmed": confirmed(t.rounds, t.probes, speed)}
        stats["latency_ms"]["speed_probes_ms"] = t.probes  # each round's; the job's fastest: report["speed_probe"]
        if not stats["latency_ms"]["confirmed"]:
            report["notes"].append(f"{art['path']}: its latency is unconfirmed: no two of its {len(t.rounds)} timed "
                                   f"rounds agreed within {100 * QUIET_TOLERANCE:.0f} % of its fastest while the "
                                   f"machine's speed probe read within {100 * speed.tolerance:.0f} % of its fastest "
                                   f"({speed.fastest_ms:.3f} ms): other work slowed the machine, and the figure may "
                                   "be high. Verify again on a quieter machine")
        stats["predicted_ms"] = stats["latency_error_pct"] = None
        table = _matching_table(tables, art, f.space)
        # the measured figure is the statistic the table was profiled and calibrated with
        statistic = table.statistic if table is not None else STATISTIC
        measured = getattr(timing, statistic)
        stats.update(measured_ms=measured, measured_statistic=statistic)
        if table is not None:
            pred = table.predict(f.space, f.arch)
            predicted = pred["predicted_ms"]
            stats.update(predicted_ms=predicted, latency_table=str(table.path),
                         latency_error_pct=100 * (predicted - measured) / measured)
            if "interval90_ms" in pred:  # the measured latency against the table's own error bars
                lo, hi = pred["interval90_ms"]
                stats.update(predicted_interval90_ms=[lo, hi], within_interval90=bool(lo <= measured <= hi))
            foreign = table.foreign_reasons(where)  # where: the target (targets/), if any
            if foreign:
                report["notes"].append(f"{art['path']}: table {table.path} was measured on another host or runtime "
                                       f"({'; '.join(foreign[:2])}): its prediction is not this machine's")
        elif tables:
            headless = next((tb for tb in tables if tb.meta.get("runtime") == art["runtime"]
                             and tb.meta["device"].get("precision") == art["precision"] and tb.fits_body(f.space)), None)
            if headless is not None:
                report["notes"].append(f"{art['path']}: table {headless.path} fits this network's body but has no head "
                                       f"for {f.space.num_classes} classes; profile the space with that class count "
                                       "to compare its latency")
            else:
                report["notes"].append(f"{art['path']}: no latency table given for {art['runtime']} {art['precision']} "
                                       f"of space {f.space.name!r}; latency measured, not compared")
        checks = judge(stats, tol)
        for budget in held_to:
            if (budget["runtime"], budget["precision"]) != (art["runtime"], art["precision"]):
                continue
            verdict = {**judge_budget(budget["device"], budget["budget_ms"], measured, stats["latency_ms"]["band_ms"]),
                       "artifact": art["path"], "runtime": art["runtime"], "precision": art["precision"],
                       "statistic": statistic, "advisory": advisory}
            report["budgets"].append(verdict)
            checks.setdefault("latency_budget", {"value": [], "limit": [], "pass": True, "advisory": advisory})
            check = checks["latency_budget"]
            check["value"].append(verdict["line"])
            check["limit"].append(f"{budget['device']}: {statistic} <= {budget['budget_ms']:g} ms, or its fastest "
                                  "quiet round within it, scaled by its speed probe (the measurement's noise)")
            check["pass"] &= verdict["met"] or advisory
            if not verdict["met"]:
                report["notes"].append(f"{'warning: ' if advisory else ''}{verdict['line']}: the deployed network misses "
                                       "its latency budget" + (" (--latency-advisory: not a failure)" if advisory else ""))
            elif verdict["verdict"] == "met within noise":
                report["notes"].append(f"{verdict['line']}: over the budget, but within the measurement's own noise "
                                       f"(its fastest quiet round, scaled to the machine's fastest speed probe: {verdict['band_ms'][0]:.4g} ms)")
        checks["sha256"] = {"value": "matches model.json" if intact else "differs from model.json (file changed after export)",
                            "limit": "equal", "pass": intact}
        ok = all(c["pass"] for c in checks.values())
        report["artifacts"].append({**{k: art[k] for k in ("path", "runtime", "precision", "layout")}, "stats": stats,
                                    "op_resolver": t.resolver, "tolerances": asdict(tol), "checks": checks, "passed": ok})
        report["passed"] &= ok
    report["notes"] += precision_advice(report["artifacts"])
    write_json(f.path / "verify.json", report)
    return report
