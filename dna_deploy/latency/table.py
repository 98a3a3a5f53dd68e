"""The latency lookup table: versioned JSON with units in field names, never a pickle.

A network's latency is predicted as the sum of its entries (the raw sum) and, once
`profile validate` has fitted it, calibrated as a * raw_sum + b: runtimes fuse across layers and
pay a per-inference overhead, which a plain sum misses.

Two granularities (meta.granularity). "layer" (the default): one entry per distinct layer, summed
within each block; few models to time (51 on tiny). "block": one entry per candidate of each block,
timed as one model (600 on tiny), so what a runtime does across the layers of a block (fusion,
cache reuse, layout changes) is measured instead of assumed away. Both stay additive over blocks,
the unit DNA's search chooses, so search remains exact with either. Stem and head are layer
entries in both.

Which statistic of an entry's timings is summed is the table's `meta.statistic`: "p10_ms" for
tables profiled since it was recorded, "median_ms" for older ones (whose calibration was fitted to
medians). Validation and `verify` measure networks with the same statistic. Why the 10th percentile:
on a shared machine other processes only ever add time, in phases of seconds to minutes. Two
profiles of vit-tiny on ONNX Runtime, minutes apart on one 2-core host, gave one layer a median of
0.082 and 0.114 ms and a 10th percentile of 0.0816 and 0.0813 ms; 200 networks timed in three
rounds agreed round to round within ±10 % for 47 % of them by the median and 56 % by the 10th
percentile, and the calibrated table met ±10 % for 62 % of 100 held-out networks by medians and
97 % by 10th percentiles (the same run's stored timings scored both ways).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from dna_deploy.errors import DataError, TableError
from dna_deploy.io import read_json, write_json
from dna_deploy.space import Arch, LayerSpec, Op, SearchSpace

FORMAT = "dna-deploy-lut/1"
STATISTIC = "p10_ms"  # what new tables sum and what networks are measured with (see above)
LEGACY_STATISTIC = "median_ms"  # tables without meta.statistic
STATISTICS = (STATISTIC, LEGACY_STATISTIC)


GRANULARITIES = ("layer", "block")


def block_entry_key(specs: list[LayerSpec]) -> str:
    """The entry of one block candidate: its layers' keys in order (skips build nothing). Equal
    keys are equal models, whichever block and skip placement they come from."""
    return "block:" + "+".join(s.key for s in specs if s.key)


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise DataError(f"granularity {granularity!r} is not one of {', '.join(GRANULARITIES)}")
    return granularity


def table_file_name(device_name: str, space_name: str, granularity: str = "layer") -> str:
    """`<device>__<space>.json`, with `__blocks` before the suffix for a block table."""
    from dna_deploy.outputs import safe_name

    suffix = "" if check_granularity(granularity) == "layer" else f"__{granularity}s"
    return f"{safe_name(device_name, what='device name')}__{safe_name(space_name, what='space name')}{suffix}.json"


def table_entries(space: SearchSpace, granularity: str) -> dict[str, list[LayerSpec]]:
    """Every entry a table of this granularity needs, by key, with the layers its op model runs:
    stem and head, then each distinct layer or each block candidate."""
    entries = {s.key: [s] for s in space.stem_specs() + [space.head_spec()]}
    if check_granularity(granularity) == "layer":
        return {**entries, **{s.key: [s] for s in space.all_layer_specs()}}
    for b in range(len(space.blocks)):
        for ops in space.block_candidates(b):
            specs = [s for s in space.block_specs(b, ops) if s.key]
            entries.setdefault(block_entry_key(specs), specs)
    return entries


def is_shipped(path: str | Path) -> bool:
    """True for a table that ships with dna-deploy (the package's latency_tables folder)."""
    from dna_deploy.io import shipped_dir

    return Path(path).resolve().parent == shipped_dir("latency_tables").resolve()


def refuse_shipped(path: str | Path, *, force: bool = False) -> None:
    """Shipped tables are shared samples: never rewritten unless asked for by name (--force)."""
    if not force and Path(path).exists() and is_shipped(path):
        raise TableError(f"{path} is a latency table shipped with dna-deploy and is never rewritten silently; "
                         "write your own with -o PATH (or pass --force to replace the shipped one on purpose)")


def _check_fidelity(fidelity, path) -> None:
    """The stored held-out error quantiles that predictions' intervals divide by (1 + e): numbers
    above -1 in order, a coverage in (0, 1]; a forged or broken one is refused by name."""
    if fidelity is None:
        return
    calibrated = fidelity.get("calibrated") if isinstance(fidelity, dict) else None
    if not isinstance(fidelity, dict) or not isinstance(calibrated, (dict, type(None))):
        raise TableError(f"latency table {path}: 'fidelity' must be a mapping as `dna-deploy profile validate` writes "
                         "it; re-run it")
    q = (calibrated or {}).get("rel_error_quantiles")
    if q is None:
        return
    if not isinstance(q, dict):
        raise TableError(f"latency table {path}: fidelity.calibrated.rel_error_quantiles must be a mapping; "
                         "re-run `dna-deploy profile validate`")
    for k in ("q05", "q50", "q95", "coverage"):
        v = q.get(k)
        if v is None and k in ("q50", "coverage"):
            continue
        low, high = (0.0, 1.0) if k == "coverage" else (-1.0, 100.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not low < v <= high:
            raise TableError(f"latency table {path}: stored error quantile {k} is {str(v)[:40]}; expected a number in "
                             f"({low:g}, {high:g}]; re-run `dna-deploy profile validate`")
    if q["q05"] > q["q95"]:
        raise TableError(f"latency table {path}: stored error quantiles q05 {q['q05']} > q95 {q['q95']}; "
                         "re-run `dna-deploy profile validate`")


@dataclass
class LatencyTable:
    meta: dict
    entries: dict[str, dict]
    calibration: dict | None = None
    fidelity: dict | None = None
    path: Path | None = field(default=None, compare=False)

    # ---------------- I/O ----------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "calibration": self.calibration, "fidelity": self.fidelity,
                "entries": dict(sorted(self.entries.items()))}

    def save(self, path: str | Path) -> Path:
        self.path = Path(path)
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        try:
            d = read_json(path, what="latency table")
        except DataError as e:
            raise TableError(str(e)) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise TableError(f"{path} is not a dna-deploy latency table (format {FORMAT!r} expected); "
                             "make one with `dna-deploy profile`")
        entries = d.get("entries")
        if not isinstance(entries, dict) or not isinstance(d.get("meta"), dict):
            raise TableError(f"latency table {path} lacks 'meta' or 'entries'; regenerate it")
        statistic = d["meta"].get("statistic", LEGACY_STATISTIC)
        if d["meta"].get("granularity", "layer") not in GRANULARITIES:
            raise TableError(f"latency table {path}: meta.granularity {d['meta']['granularity']!r} is not one of "
                             f"{', '.join(GRANULARITIES)}")
        if statistic not in STATISTICS:
            raise TableError(f"latency table {path}: meta.statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
        for k, v in entries.items():
            for field_ in dict.fromkeys(("median_ms", statistic)):
                x = v.get(field_) if isinstance(v, dict) else None
                # Infinity and NaN parse as JSON numbers here: a forged entry is refused by name
                if not isinstance(x, (int, float)) or isinstance(x, bool) or not (math.isfinite(x) and x >= 0):
                    raise TableError(f"latency table {path}: entry {str(k)[:80]!r} has no valid {field_} ({str(x)[:40]}: "
                                     "not a finite number >= 0); regenerate it")
        device = d["meta"].get("device")
        if not isinstance(device, dict) or not all(isinstance(device.get(k), str) for k in ("name", "runtime", "precision")):
            raise TableError(f"latency table {path}: meta.device must name the device spec (name, runtime, precision); "
                             "regenerate it with `dna-deploy profile`")
        cal = d.get("calibration")
        if cal is not None:
            a, b = (cal.get(k) if isinstance(cal, dict) else None for k in ("a", "b"))
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)) or a <= 0:
                raise TableError(f"latency table {path}: calibration needs a finite slope a > 0 and offset b "
                                 f"(got a={str(a)[:40]}, b={str(b)[:40]}); re-run `dna-deploy profile validate` on it")
        _check_fidelity(d.get("fidelity"), path)
        return cls(d["meta"], entries, cal, d.get("fidelity"), Path(path))

    # ---------------- checks ----------------
    @property
    def name(self) -> str:
        return self.meta.get("device", {}).get("name", str(self.path))

    def foreign_reasons(self, target=None) -> list[str]:
        """Why this table does not describe this machine ([] when it does): the host identity (CPU
        model, flags, cores) or the runtime's package versions differ from the ones recorded.
        With a remote `target` (targets/), that target's identity and versions, read there."""
        from dna_deploy.host import host_description, host_differences, runtime_versions, version_differences

        device = self.meta.get("device", {})
        runtime = self.meta.get("runtime")
        remote = target is not None and not target.is_local
        here = target.host_description() if remote else host_description(device.get("device", "cpu"))
        reasons = host_differences(self.meta.get("host"), here)
        if runtime:
            versions = (target.runtime_versions(runtime, device.get("op_resolver")) if remote
                        else runtime_versions(runtime, device.get("op_resolver")))
            reasons += version_differences(self.meta.get("versions"), versions)
        return reasons

    def speed_probe_here(self) -> dict | None:
        """The fastest speed probe recorded while this table was profiled (runtimes/base.SpeedProbe
        .record), when the table was profiled on this host; else (or from before the record) None."""
        from dna_deploy.host import host_description, host_differences

        device = self.meta.get("device", {})
        if host_differences(self.meta.get("host"), host_description(device.get("device", "cpu"))):
            return None
        return self.meta.get("speed_probe")

    def fits_body(self, space: SearchSpace) -> bool:
        """Measured for this space's body (everything but the class count). Tables from before
        `body_fingerprint` are matched through the class count their head entry names."""
        body = self.meta.get("body_fingerprint")
        if body is not None:
            return body == space.body_fingerprint
        heads = {int(m.group(1)) for k in self.entries for m in [re.search(r"^head-.*-out:(\d+)", k)] if m}
        return any(dataclasses.replace(space, num_classes=k).fingerprint == self.meta.get("space_fingerprint")
                   for k in heads)

    def fits(self, space: SearchSpace) -> bool:
        """Predicts every network of this space: its body, and a head for its class count."""
        return self.fits_body(space) and not self.missing([space.head_spec()])

    def check_space(self, space: SearchSpace) -> None:
        if not self.fits_body(space):
            raise TableError(f"latency table {self.path or self.name} was measured for space "
                             f"{self.meta.get('space')!r} (fingerprint {self.meta.get('space_fingerprint')}), not "
                             f"{space.name!r} ({space.fingerprint}); "
                             f"profile this space: dna-deploy profile --space {space.name} --device {self.name}")
        missing = self.missing([space.head_spec()])
        if missing:
            raise TableError(f"latency table {self.path or self.name} fits space {space.name!r} but has no head for "
                             f"{space.num_classes} classes ({missing[0]}); profile the space with this class count: "
                             f"dna-deploy profile --space SPACE_FILE --device {self.name}")

    def missing(self, specs: list[LayerSpec]) -> list[str]:
        return sorted({s.key for s in specs if s.key and s.key not in self.entries})

    @property
    def granularity(self) -> str:
        return self.meta.get("granularity", "layer")

    def missing_entries(self, space: SearchSpace) -> list[str]:
        """The entries this table lacks to predict every network of the space."""
        return sorted(k for k in table_entries(space, self.granularity) if k not in self.entries)

    def block_keys(self, space: SearchSpace, block: int, ops: tuple[Op, ...]) -> list[str]:
        """The entries whose sum is one block candidate's latency: one for a block table, its
        layers' for a layer table."""
        specs = space.block_specs(block, ops)
        if self.granularity == "block":
            return [block_entry_key(specs)]
        return [s.key for s in specs if s.key]

    @property
    def statistic(self) -> str:
        """The TimingStats field this table's entries, calibration and fidelity are in."""
        return self.meta.get("statistic", LEGACY_STATISTIC)

    def entry_ms(self, key: str) -> float:
        """One entry's latency (its `statistic`; a clear error naming the nearest entries when absent)."""
        return self._lookup(key)

    def _lookup(self, key: str) -> float:
        try:
            return float(self.entries[key][self.statistic])
        except KeyError:
            near = difflib.get_close_matches(key, self.entries, n=2, cutoff=0.6)
            hint = f"; nearest: {', '.join(near)}" if near else ""
            raise TableError(f"latency table {self.path or self.name} has no entry {key!r}{hint}; "
                             "re-profile (dna-deploy profile --resume adds missing entries)") from None

    # ---------------- prediction ----------------
    def layers_ms(self, specs: list[LayerSpec]) -> float:
        return sum(self._lookup(s.key) for s in specs if s.key)

    def fixed_ms(self, space: SearchSpace) -> float:
        """Stem and head: in every network."""
        return self.layers_ms(space.stem_specs() + [space.head_spec()])

    def block_ms(self, space: SearchSpace, block: int, ops: tuple[Op, ...]) -> float:
        return sum(self._lookup(k) for k in self.block_keys(space, block, ops))

    def raw_ms(self, space: SearchSpace, arch: Arch) -> float:
        return self.fixed_ms(space) + sum(self.block_ms(space, b, ops) for b, ops in enumerate(arch.blocks))

    def calibrate(self, raw_ms: float) -> float:
        if not self.calibration:
            return raw_ms
        ms = self.calibration["a"] * raw_ms + self.calibration["b"]
        if ms <= 0 < raw_ms:  # a forged or broken offset: never a negative latency taken as true
            raise TableError(f"latency table {self.path or self.name}: its calibration ({self.calibration['a']:g} x "
                             f"{raw_ms:.4g} ms {self.calibration['b']:+g} ms) predicts {ms:.4g} ms, not a latency; "
                             "re-run `dna-deploy profile validate` on it")
        return ms

    def uncalibrate(self, budget_ms: float) -> float:
        """The raw-sum budget equivalent to a calibrated budget (a > 0)."""
        if not self.calibration:
            return budget_ms
        return (budget_ms - self.calibration["b"]) / self.calibration["a"]

    def error_quantiles(self) -> dict | None:
        """The held-out relative errors (predicted - measured) / measured of the calibrated table:
        {q05, q50, q95}, from `profile validate` on this table; None before it ran."""
        q = ((self.fidelity or {}).get("calibrated") or {}).get("rel_error_quantiles")
        return q if isinstance(q, dict) and {"q05", "q95"} <= set(q) else None

    def interval(self, predicted_ms: float) -> tuple[float, float] | None:
        """90 % interval of the measured latency for a prediction: measured = predicted / (1 + e)
        with e between the bounds validation stored (q05, q95: a 90 % prediction interval of the
        held-out errors, or their extremes when fewer than 19 networks were held out, see
        interval_coverage)."""
        q = self.error_quantiles()
        if q is None:
            return None
        return predicted_ms / (1 + q["q95"]), predicted_ms / (1 + q["q05"])

    def interval_coverage(self) -> float | None:
        """What `interval` covers: 0.9, or less when validation held out fewer than 19 networks
        (tables validated before this was recorded used sample percentiles: 0.9 nominal)."""
        q = self.error_quantiles()
        return None if q is None else float(q.get("coverage", 0.9))

    def upper_end_budget(self, budget_ms: float) -> float:
        """The budget a prediction must meet for the upper end of its 90 % interval to meet
        `budget_ms` (never looser than the budget itself; the budget unchanged before validation)."""
        q = self.error_quantiles()
        return budget_ms if q is None else budget_ms * (1 + min(q["q05"], 0.0))

    def predict(self, space: SearchSpace, arch: Arch) -> dict:
        self.check_space(space)
        raw = self.raw_ms(space, arch)
        out = {"raw_ms": raw, "predicted_ms": self.calibrate(raw), "calibrated": bool(self.calibration)}
        iv = self.interval(out["predicted_ms"])
        if iv is not None:
            out["interval90_ms"] = list(iv)
        return out
