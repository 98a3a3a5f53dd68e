"""One interface for every runtime, and one timing loop for all of them.

Public methods check state and inputs, then call the runtime's `_prepare/_run/_close`. Inputs are
NCHW float32 arrays for every runtime; a runner converts them to its native form (NHWC, int8, a CUDA
tensor) in `_to_native` *outside* the timed region, and back in `_from_native`.
Not measured is None, never 0.0.
"""

from __future__ import annotations

import math
import platform
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dna_deploy.errors import DataError


@dataclass(frozen=True)
class TimingStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    runs: int

    @classmethod
    def from_samples(cls, samples_ms) -> "TimingStats":
        s = np.asarray(samples_ms, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no timing samples")
        return cls(float(np.median(s)), float(np.percentile(s, 10)), float(np.percentile(s, 90)),
                   float(s.mean()), float(s.std(ddof=1)) if s.size > 1 else 0.0, int(s.size))

    @property
    def cv(self) -> float:
        """Spread relative to the median, robust to outliers: (p90 - p10) / (2.56 * median)."""
        return (self.p90_ms - self.p10_ms) / (2.563 * self.median_ms) if self.median_ms > 0 else float("inf")

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class Runner(ABC):
    """A model loaded on one runtime. Use as a context manager."""

    name: ClassVar[str]
    extra: ClassVar[str | None] = None  # pip extra that installs the runtime
    artifact_suffix: ClassVar[str] = ".onnx"  # what the host prepares for this runtime
    # Preparing takes seconds (a converter beyond the ONNX export): hosts prepare in parallel processes.
    slow_to_prepare: ClassVar[bool] = False
    # Kernel sets a runtime can run with (LiteRT: with or without XNNPACK); () = only its default.
    # Part of the device like threads: latency can differ by 5x (int8 on x86), so profiling and
    # deploying must use the same one.
    op_resolvers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: Any, *, threads: int = 1, device: str = "cpu", precision: str = "fp32",
                 input_shape: tuple[int, ...] | None = None, op_resolver: str | None = None):
        if op_resolver is not None and op_resolver not in self.op_resolvers:
            raise DataError(f"{self.name}: op resolver {op_resolver!r} is not one of its kernel sets "
                            f"({', '.join(self.op_resolvers) or 'it has only its default'})")
        self.op_resolver = op_resolver
        self.model, self.threads, self.device, self.precision = model, threads, device, precision
        self.is_active = False
        # logical NCHW shape: read from the model file by _prepare; given by the caller for torch modules
        self.input_shape: tuple[int, ...] | None = tuple(input_shape) if input_shape else None

    # ---- what a runtime implements ----
    @classmethod
    def unavailable_reason(cls, device: str = "cpu") -> str | None:
        """None when usable here; else why not (naming the extra to install)."""
        return None

    @classmethod
    @abstractmethod
    def prepare_artifact(cls, module, example, workdir: Path, *, name: str, precision: str = "fp32",
                         calibration: np.ndarray | None = None, op_resolver: str | None = None) -> Any:
        """Host side: a torch module -> what this runtime loads (a file path; for torch the module),
        shaped for the kernels that will run it (op_resolver, for runtimes that have several)."""

    # True for a converter that makes several precisions of one model in one run (LiteRT: onnx2tf
    # builds the graph once, then writes fp32 and int8 from it); such a runner also has
    # prepare_artifacts(module, example, workdir, *, name, precisions, op_resolver) -> {precision: path}
    # (latency/artifacts.share_conversions uses it). The others prepare each precision on its own.
    converts_precisions_together: ClassVar[bool] = False

    @abstractmethod
    def _prepare(self) -> None: ...

    @abstractmethod
    def _run(self, native: Any) -> Any: ...

    def _to_native(self, x: np.ndarray) -> Any:
        return x

    def _from_native(self, y: Any) -> np.ndarray:
        return np.asarray(y, dtype=np.float32)

    def _sync(self) -> None:
        """Wait for queued device work (GPU runtimes)."""

    def _timed_run(self, native: Any) -> float:
        """One timed inference in ms; GPU runtimes override with device events."""
        t0 = time.perf_counter_ns()
        self._run(native)
        self._sync()
        return (time.perf_counter_ns() - t0) / 1e6

    def _close(self) -> None: ...

    # ---- the public interface ----
    def activate(self) -> "Runner":
        if not self.is_active:
            try:
                self._prepare()
            except Exception as e:  # runtimes raise their own types for unreadable files
                if isinstance(self.model, (str, Path)):  # a model file the user handed us
                    raise DataError(f"{self.name} cannot load {self.model}: {str(e).strip().splitlines()[0][:300]}") from e
                raise
            self.is_active = True
        return self

    def close(self) -> None:
        if self.is_active:
            self._close()
            self.is_active = False

    def __enter__(self) -> "Runner":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, x: np.ndarray) -> np.ndarray:
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise DataError(f"{self.name}: input shape {list(x.shape)} does not fit the model's {list(self.input_shape)}")
        return x

    def infer(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 in, float32 out (feature maps back in NCHW)."""
        return self._from_native(self._run(self._to_native(self._check(x))))

    def time(self, x: np.ndarray, *, warmup: int = 10, runs: int = 50, warmup_s: float | None = None) -> list[float]:
        """Raw latency samples in ms (warm-up discarded). The one timing loop of the project.

        The warm-up lasts `warmup` runs and at least `warmup_s` seconds (WARMUP_S by default), as
        trtexec warms up for 200 ms: a model idle for a few seconds (while other models of an
        interleaved round ran) came back 30-50 % slower for its first ~0.1 s on the 2-core cloud
        machine here, so short warm-ups timed op tables "cold" while verify, right after its
        accuracy pass, timed the deployed network "hot": the quickstart predicted 0.41 ms for a
        network that measured 0.28 ms. Block tables warm up only 0.02 s
        (latency/profiler.py: TIMING_DEFAULTS): measured against 0.1 s, their calibrated
        predictions were as good, and calibration absorbs what the short warm-up leaves."""
        native = self._to_native(self._check(x))
        self._warm_up(native, warmup, warmup_s)
        return [self._timed_run(native) for _ in range(runs)]

    def time_round(self, x: np.ndarray, probe: "SpeedProbe", *, warmup: int = 2, runs: int = 20,
                   warmup_s: float | None = None) -> tuple[list[float], float]:
        """One round of a model timed among others: warm up as `time` does, probe the machine's speed,
        time `runs` runs, probe again. Returns (samples in ms, the slower of the two probes in ms):
        a round is only as trustworthy as the slower moment around it."""
        native = self._to_native(self._check(x))
        self._warm_up(native, warmup, warmup_s)
        before = probe.measure()
        samples = [self._timed_run(native) for _ in range(runs)]
        return samples, max(before, probe.measure())

    def _warm_up(self, native: Any, warmup: int, warmup_s: float | None) -> None:
        limit = time.perf_counter() + (WARMUP_S if warmup_s is None else warmup_s)
        done = 0
        while done < warmup or time.perf_counter() < limit:
            self._run(native)
            done += 1
        self._sync()


WARMUP_S = 0.25  # seconds of warm-up before every timed batch (see Runner.time)

# A timed batch (a round) whose own 10th percentile is more than this above the fastest round's was
# slowed by something else on the machine, and is left out (quiet_rounds).
QUIET_TOLERANCE = 0.05
# A round whose speed probe (SpeedProbe) ran more than this above the probe's fastest was timed
# while the machine was slowed, whatever the round's own figures say.
PROBE_TOLERANCE = 0.15


class SpeedProbe:
    """How fast this machine runs right now: a fixed pure-Python loop, timed right before and after
    each round (Runner.time_round), against the fastest it ran in this measurement.

    Why: on a shared 2-core VM (AMD EPYC, no AVX-512; 2026-12-01) the machine ran ~1.6-2x slower
    for seconds at a time, 55-75 % of the time. Two rounds of a network both caught in a slow phase
    agree with each other, so "the fastest round backed by a second" (confirmed) passed slow
    figures. `python bench/speed_probe.py` there (745 rounds of 24 ONNX Runtime networks, 75 % of
    them slowed > 10 %): the probe's slowdown tracked the round's (correlation 0.81; a small numpy
    matmul's did not, in an earlier trial). Replaying stopping rules on those rounds, a network's
    figure fell within +-10 % of its fast-state latency for 80-83 % of networks when confirmation
    ignored the probes (5.3-7.0 rounds), 89 % with a fixed 9 rounds, and 95 % with probes (3 + up
    to 9 extra: 11.4 rounds; bench/results/speed_probe.json). In a calmer stretch (63 % of rounds
    slowed), an ad-hoc replay of the same rules gave 97 % without probes and 99.97 % with them.
    Interference only adds time, so the fastest probe of a measurement is the machine's own speed;
    on a quiet machine every probe passes and no round is added."""

    LOOP = 20_000  # ~0.7 ms on that machine in its fast state; min of 3 per probe

    def __init__(self, fastest_ms: float = float("inf"), tolerance: float = PROBE_TOLERANCE):
        self.fastest_ms = fastest_ms
        self.tolerance = tolerance  # a probe this far above the fastest was slowed

    @classmethod
    def resumed(cls, probes: "dict[str, list[float]] | list[list[float]]") -> "SpeedProbe":
        """A probe that knows the fastest of the probes recorded by an earlier, resumed run."""
        lists = probes.values() if isinstance(probes, dict) else probes
        return cls(min((p for ps in lists for p in ps), default=float("inf")))

    def record(self) -> dict:
        """The fastest probe with what makes it comparable (the loop, the interpreter build, the
        machine's name), for a measurement's metadata: a later job here starts from it (`seeded`)."""
        fastest = self.fastest_ms if math.isfinite(self.fastest_ms) else None
        return {"fastest_ms": fastest, **_probe_identity()}

    @classmethod
    def seeded(cls, records: "list[dict | None]") -> "SpeedProbe":
        """A probe that starts from the fastest of earlier measurements' records (`record`) taken by
        the same loop, on the same interpreter build, on this machine (by name: a VM of the same
        CPU model elsewhere may run the loop faster or slower); other records are ignored.

        Why: a short job (verify times one to three artifacts in tens of seconds) can fall wholly
        in one slow phase of a shared machine, and then its own fastest probe is a slow one, every
        probe passes, and slow figures are confirmed (make demo on a 2-core EPYC, 2026-12-01: ONNX
        Runtime measured 0.72 ms against 0.43 predicted, 'confirmed'). The table profiled on this
        machine minutes before has seen its full speed."""
        here = _probe_identity()
        usable = [r["fastest_ms"] for r in records if isinstance(r, dict) and all(r.get(k) == v for k, v in here.items())
                  and isinstance(r.get("fastest_ms"), (int, float)) and 0 < r["fastest_ms"] < float("inf")]
        return cls(min(usable, default=float("inf")))

    def measure(self) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            total = 0
            for i in range(self.LOOP):
                total += i
            best = min(best, time.perf_counter() - t0)
        self.fastest_ms = min(self.fastest_ms, 1e3 * best)
        return 1e3 * best

    def quiet(self, probe_ms: float) -> bool:
        return probe_ms <= self.fastest_ms * (1 + self.tolerance)


def _probe_identity() -> dict:
    """What a speed probe's figure depends on besides the machine's load: the loop, the exact
    interpreter build (two builds of one Python version can differ 10-20 % on a pure-Python loop)
    and the machine itself."""
    return {"loop": SpeedProbe.LOOP, "python": sys.version, "node": platform.node()}


def quiet_round_indices(rounds: list[list[float]], tolerance: float) -> list[int]:
    if not rounds:
        return []
    floors = [float(np.percentile(r, 10)) for r in rounds]
    fastest = min(floors)
    return [i for i, f in enumerate(floors) if f <= fastest * (1 + tolerance)]


def quiet_rounds(rounds: list[list[float]], tolerance: float = QUIET_TOLERANCE) -> list[list[float]]:
    """The rounds (timed batches, spread over time) measured while nothing else slowed the machine.

    On a shared 2-core VM (an AMD EPYC without AVX-512, 2026-12-01) the machine switched for
    seconds at a time into a state where everything ran about 1.6x slower: the same ONNX Runtime
    session timed 0.45 ms in one batch and 0.68-0.83 ms in the next. Pooling a network's three
    rounds and taking their 10th percentile kept the slow state whenever all three rounds fell in it:
    timing the same 200 networks twice, only 75 % agreed within +-10 %. Interference only ever adds
    time, so the fastest round is the machine's own speed; rounds within `tolerance` of it are kept
    and the rest dropped. On a quiet machine every round is within a few % and all are kept."""
    return [rounds[i] for i in quiet_round_indices(rounds, tolerance)]


def confirmed(rounds: list[list[float]], probes: list[float] | None = None, speed: SpeedProbe | None = None,
              tolerance: float = QUIET_TOLERANCE) -> bool:
    """The fastest round is backed by a second one within tolerance (else it may itself be a fluke,
    or every round so far was slowed: measure another). With each round's probe (`probes`, from
    Runner.time_round) and the measurement's `speed`, both must also have run while the probe
    was quiet: two rounds in the same slow phase back each other."""
    kept = quiet_round_indices(rounds, tolerance)
    if probes is not None and speed is not None:
        kept = [i for i in kept if speed.quiet(probes[i])]
    return len(kept) >= 2


def quiet_stats(rounds: list[list[float]], tolerance: float = QUIET_TOLERANCE) -> "TimingStats":
    """TimingStats of the quiet rounds' samples pooled."""
    return TimingStats.from_samples([v for r in quiet_rounds(rounds, tolerance) for v in r])


# An extra round of a model starts at least this long after its previous round ended, so that its
# rounds do not all fall in one slow phase of the machine (which lasts seconds) when only a few
# models are left to time and a pass over them takes less.
MIN_ROUND_SPACING_S = 1.0


def wait_for_spacing(last_round_end: float | None) -> None:
    """Before an extra round: sleep until MIN_ROUND_SPACING_S after the model's last round ended
    (time.monotonic(); None: no round yet)."""
    if last_round_end is not None:
        time.sleep(max(0.0, last_round_end + MIN_ROUND_SPACING_S - time.monotonic()))


# time_in_rounds' defaults (verify's timing): 5 rounds, then up to 9 more while unconfirmed
# (bench/speed_probe.py). Validation has its own cap (latency/validate.MAX_EXTRA_ROUNDS).
MODEL_ROUNDS = 5
MODEL_MAX_EXTRA_ROUNDS = 9


def time_in_rounds(runner: Runner, x: np.ndarray, *, rounds: int = MODEL_ROUNDS, runs_per_round: int = 20,
                   max_extra_rounds: int = MODEL_MAX_EXTRA_ROUNDS, pause_s: float = 0.2, speed: SpeedProbe | None = None,
                   resume: tuple[list[list[float]], list[float]] | None = None) -> tuple[list[list[float]], list[float]]:
    """One model timed the way table entries and validated networks are: in rounds (each warmed up,
    pause_s apart, so a slow phase of the machine does not cover them all), with extra rounds, at
    least MIN_ROUND_SPACING_S apart, while the fastest is unconfirmed. Pass one `speed` for all
    the models of one job, so that the machine's fastest probe is learnt over all of them (a model
    whose rounds all fall in one slow phase would otherwise judge its probes against that phase).
    `resume`: the (rounds, probes) of an earlier call for this model, continued in place (a model
    confirmed early, whose probes a faster probe learnt later no longer passes), still within
    rounds + max_extra_rounds in all. Returns (rounds, each round's probe); quiet_stats(rounds) is
    its latency."""
    speed = speed if speed is not None else SpeedProbe()
    timed, probes = resume if resume is not None else ([], [])
    spaced = resume is None  # a resumed model's last round ended a while ago (others were timed since)
    while len(timed) < rounds or (not confirmed(timed, probes, speed) and len(timed) < rounds + max_extra_rounds):
        if timed and spaced:
            time.sleep(pause_s if len(timed) < rounds else MIN_ROUND_SPACING_S)
        spaced = True
        samples, probe = runner.time_round(x, speed, warmup=2, runs=runs_per_round)
        timed.append(samples)
        probes.append(probe)
    return timed, probes


def measure(runner: Runner, x: np.ndarray, *, warmup: int = 10, runs: int = 50) -> TimingStats:
    return TimingStats.from_samples(runner.time(x, warmup=warmup, runs=runs))
