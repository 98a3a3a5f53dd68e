"""Every stage's settings, with their defaults, in one place.

The library functions take these dataclasses, the CLI takes its option defaults from them, and a
pipeline file's sections are checked against them (every key, before anything runs), so a default
can never differ between `dna-deploy retrain` and `dna-deploy run`. Pure dataclasses: importing
this module imports no torch, so `dna-deploy --help` stays fast.

Field names are the pipeline keys; `--field-name` (dashes for underscores) is the CLI flag, which
is how a pipeline stage writes the command that reproduces it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass

from dna_deploy.errors import DataError, suggest

PRECISIONS = ("fp32", "fp16", "int8")
# What each export target can produce here (ONNX is the hub format: fp32 only).
TARGET_PRECISIONS = {"onnx": ("fp32",), "tflite": ("fp32", "fp16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
EXPORT_TARGETS = tuple(TARGET_PRECISIONS)
RATING_METRICS = ("l1-norm", "mse-channel", "mse")
DISTILL_LOSSES = ("mse-channel", "mse")
DISTILL_METHODS = ("dna", "dna++")  # DNA: from a teacher; DNA++: teacher-free, self-supervised
AUGMENTATIONS = ("auto", "digits", "natural")
FEATURE_CACHES = ("auto", "none", "disk")  # teacher features: auto = in RAM for embedded data, on the fly for folders


def _check(settings, *, positive=(), counts=(), choices: dict | None = None) -> None:
    """Values a type check lets through but no run can use: non-positive counts and rates, negative
    or fractional `counts` (where 0 is a choice), unknown names."""
    for name in counts:
        v = getattr(settings, name)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            raise DataError(f"{name} must be a whole number >= 0 (or left out), got {v!r}")
    for name in positive:
        v = getattr(settings, name)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise DataError(f"{name} must be positive, got {v!r}")
    for name, allowed in (choices or {}).items():
        v = getattr(settings, name)
        if v not in allowed:
            hint = suggest(str(v), [str(a) for a in allowed])
            raise DataError(f"{name} {v!r}: {hint}" + ("" if hint.startswith("valid") else
                                                       f" (choices: {', '.join(str(a) for a in allowed)})"))


@dataclass(frozen=True)
class ComputeSettings:
    """Where and how a stage runs (dna_deploy/compute.py); never part of what a checkpoint must
    match, so a run started on a GPU may resume on the CPU and the other way round.

    device: auto (this rank's GPU if any, else CPU), cpu, cuda or cuda:N. amp: bf16 (or fp16 with a
    loss scaler) autocast on CUDA. channels_last: convolutions in NHWC memory layout, on the CPU as
    on CUDA (oneDNN's NHWC kernels take a CNN training step 1.2-1.7x faster than NCHW on 2 CPU
    cores, bench/train_layout.py, with gradients within 4e-4 of NCHW's, relative; on CUDA it is
    the tensor-core layout); false gives the NCHW path of runs before it.
    workers: loader processes per rank [cores - 1, at most 8].
    checkpoint_every: also checkpoint every this many steps inside an epoch (an ImageNet epoch of
    one block takes hours).
    timeout_min: every collective's limit under torchrun: a rank that lost a peer raises after it
    instead of waiting for NCCL's watchdog (a failure a rank catches reaches every rank at once).
    sync_bn: SyncBatchNorm under torchrun on GPUs, so BatchNorm (and DNA++'s variance hinge)
    sees the global batch rather than each rank's slice of it."""

    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    workers: int | None = None
    checkpoint_every: int | None = 500
    timeout_min: float = 30.0  # a rank waits this long in a collective before the job ends (not hangs)
    sync_bn: bool = False  # BatchNorm statistics over the global batch (all ranks) while training on GPUs

    def __post_init__(self):
        _check(self, positive=("checkpoint_every", "timeout_min"))
        if self.workers is not None and self.workers < 0:
            raise DataError(f"workers must be >= 0, got {self.workers}")
        d = str(self.device).lower()
        if not (d in ("auto", "cpu", "cuda") or (d.startswith("cuda:") and d[5:].isdigit())):
            raise DataError(f"device {self.device!r}: use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class ClassifierConfig:
    """Supervised training (the teacher, the retrained network): AdamW, cosine schedule, optional logit KD."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    kd_weight: float = 0.0  # weight of KL(teacher || student) on logits when a teacher is given
    kd_temperature: float = 2.0
    seed: int = 0
    max_steps: int | None = None  # cap steps per epoch (smoke runs)
    val_images: int | None = None  # validate each epoch on a fixed subset of this many images [all]

    def __post_init__(self):
        _check(self, positive=("epochs", "batch_size", "lr", "kd_temperature", "max_steps", "val_images"))


@dataclass(frozen=True)
class TeacherTrainSettings:
    """`dna-deploy teacher train`: a network of the space trained on the data (default: its largest)."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    max_steps: int | None = None
    arch: str | None = None
    val_images: int | None = None

    def __post_init__(self):
        _check(self, positive=("epochs", "batch_size", "lr", "max_steps", "val_images"))

    def classifier(self, seed: int) -> ClassifierConfig:
        return ClassifierConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed,
                                max_steps=self.max_steps, val_images=self.val_images)


@dataclass(frozen=True)
class TeacherSettings:
    """Where the teacher comes from: trained here (`train`), a checkpoint, or torchvision + local weights."""

    train: TeacherTrainSettings | None = None
    checkpoint: str | None = None
    torchvision: str | None = None
    weights: str | None = None
    taps: tuple[str, ...] | None = None

    def __post_init__(self):
        given = [k for k in ("train", "checkpoint", "torchvision") if getattr(self, k) is not None]
        if len(given) > 1:
            raise DataError(f"pipeline 'teacher': give one of train, checkpoint or torchvision, not {' and '.join(given)}")
        if not given:
            object.__setattr__(self, "train", TeacherTrainSettings())


@dataclass(frozen=True)
class DistillConfig:
    """Block-wise training (`dna-deploy train`); learning rates follow the DNA reference schedule.

    method "dna" distils from a teacher; "dna++" needs none (distill/selfsup.py) and uses the last
    four fields: the target's EMA momentum, the paths averaged into its population centre, the
    weight of the anti-collapse variance term, and the augmentation (auto: digits for MNIST)."""

    method: str = "dna"
    epochs: int = 5
    batch_size: int = 64
    lr_edge: float = 2e-3  # first and last block
    lr_inner: float = 5e-3  # the others
    lr_decay: float = 0.9  # per epoch
    weight_decay: float = 1e-4
    loss: str = "mse-channel"  # MSE on features normalised per channel by the teacher's statistics
    fairness: bool = False  # strict fairness: every choice of a layer once per round
    seed: int = 0
    max_steps: int | None = None  # cap steps per epoch (smoke runs)
    ema: float = 0.99
    ensemble_paths: int = 4
    variance_weight: float = 1.0
    augment: str = "auto"
    feature_cache: str = "auto"  # DNA teacher features: auto | none (teacher on the fly) | disk (fp16 memmap)
    feature_cache_gb: float = 64.0  # refuse a disk cache larger than this

    def __post_init__(self):
        _check(self, positive=("epochs", "batch_size", "lr_edge", "lr_inner", "lr_decay", "max_steps", "ensemble_paths",
                               "feature_cache_gb"),
               choices={"loss": DISTILL_LOSSES, "method": DISTILL_METHODS, "augment": AUGMENTATIONS,
                        "feature_cache": FEATURE_CACHES})
        if not 0 <= self.ema < 1:
            raise DataError(f"ema must lie in [0, 1), got {self.ema}")
        if self.variance_weight < 0:
            raise DataError(f"variance_weight must be >= 0, got {self.variance_weight}")

    def lr(self, block: int, n_blocks: int) -> float:
        return self.lr_edge if block in (0, n_blocks - 1) else self.lr_inner

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed: everything but how features reach a block."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("feature_cache", "feature_cache_gb")}


@dataclass(frozen=True)
class ProfileSettings:
    """Latency tables: reuse a shipped one (same host and runtime versions only) or measure here."""

    use_shipped: bool | str = "auto"  # auto | true | false
    rounds: int | None = None  # timing rounds; None: the granularity's (5 for layer tables, 3 for block tables)
    runs: int = 20
    cv_threshold: float = 0.05
    # networks measured end to end to calibrate (half held out): 40 holds out 20, enough for a
    # 90 % prediction interval of the error (19 at least: latency/validate.prediction_bounds)
    validate_samples: int = 40
    # of them held out to judge the calibration (the rest fit it); None: half. 19 at least give the
    # 90 % interval; fitting a line needs few, so 26 networks with 20 held out back the same interval
    # with 14 fewer networks to build and time (the quickstart's choice)
    validate_held_out: int | None = None
    validate_rounds: int = 3
    # extra rounds for entries and networks not yet confirmed by two quiet rounds with quiet speed
    # probes (runtimes/base.confirmed); None: 6 after a layer table's rounds, 9 after a block
    # table's or validation's. A machine slowed most of the time spends them; 0 trades accuracy for time
    max_extra_rounds: int | None = None
    warmup_s: float = 0.25  # seconds every timed batch warms up (runtimes/base.py: idle models run slow at first);
    # block tables warm up 0.02 s per batch (latency/profiler.py: TIMING_DEFAULTS), validation always warmup_s
    granularity: str = "layer"  # layer: one entry per distinct layer; block: one per block candidate (latency/table.py)

    def __post_init__(self):
        if self.granularity not in ("layer", "block"):
            raise DataError(f"granularity must be layer or block, got {self.granularity!r}")
        if not 0 <= self.warmup_s <= 10:
            raise DataError(f"warmup_s must lie in [0, 10] seconds, got {self.warmup_s}")
        if self.rounds is not None and not (isinstance(self.rounds, int) and self.rounds > 0):
            raise DataError(f"rounds must be a positive integer (or left out), got {self.rounds!r}")
        _check(self, positive=("runs", "cv_threshold", "validate_rounds"),
               counts=("max_extra_rounds",), choices={"use_shipped": ("auto", True, False)})
        if self.validate_samples < 6:
            raise DataError("validate_samples must be at least 6 (some to fit the correction, some held out)")
        if self.validate_held_out is not None and not (
                isinstance(self.validate_held_out, int) and 2 <= self.validate_held_out <= self.validate_samples - 4):
            raise DataError(f"validate_held_out must be a whole number from 2 to validate_samples - 4 "
                            f"({self.validate_samples - 4}: at least 4 networks fit the correction), got "
                            f"{str(self.validate_held_out)[:40]}")


@dataclass(frozen=True)
class RateSettings:
    metric: str = "l1-norm"  # DNA: mean|s - t| / std(t)
    calib_images: int = 256  # training images per candidate's BatchNorm re-estimation
    calib_batch: int = 64
    rate_images: int | None = None  # rate on a fixed subset of this many rate-split images [all]
    rate_chunk: int | None = None  # rate-split images held on the device at once [as many as rate_memory_gb holds]
    rate_memory_gb: float = 4.0  # device memory one rating chunk may take (memory, not results)
    centre_paths: int = 32  # DNA++: paths averaged into the rating target per block [every candidate if fewer]

    def __post_init__(self):
        _check(self, positive=("calib_images", "calib_batch", "rate_images", "rate_chunk", "rate_memory_gb", "centre_paths"),
               choices={"metric": RATING_METRICS})


MAX_TOP_K = 10_000  # networks one search returns (each costs a row of every front it merges)


@dataclass(frozen=True)
class SearchSettings:
    top_k: int = 5
    max_mmacs: float | None = None
    max_params: float | None = None
    budget_margin: bool = False  # search so that the upper end of each prediction's 90 % interval meets its budget
    # time the K best candidates under the budgets on each budgeted runtime here and ship the best-rated
    # one measured within every budget (deploy/confirm.py); None: the pipeline's choice (4 where every
    # budgeted device is a CPU runtime of this machine, else 0), `dna-deploy search`'s 0
    confirm_top: int | None = None
    # the K candidates are the best under K rungs of the budgets, each this fraction of the budget below
    # the last (select/search.confirmation_ladder): K x step is how much slower than its table this host
    # may run and still ship a confirmed network; 0: the K best under the budgets themselves
    confirm_step: float = 0.025

    def __post_init__(self):
        _check(self, positive=("top_k", "max_mmacs", "max_params"), counts=("confirm_top",))
        if self.confirm_top is not None and self.confirm_top > 100:
            raise DataError(f"confirm_top is the number of candidates to time, at most 100; got {self.confirm_top}")
        if not (isinstance(self.confirm_step, (int, float)) and not isinstance(self.confirm_step, bool)
                and 0 <= self.confirm_step <= 0.2):
            raise DataError(f"confirm_step is a fraction of the budget from 0 to 0.2 (0.025: 2.5 %), got "
                            f"{str(self.confirm_step)[:40]}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k <= MAX_TOP_K):
            raise DataError(f"top_k must be a whole number from 1 to {MAX_TOP_K:,}, got {str(self.top_k)[:40]}")


@dataclass(frozen=True)
class RetrainSettings:
    """`dna-deploy retrain`: the searched network trained stand-alone, from the supernet's weights."""

    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    kd_weight: float = 0.5
    max_steps: int | None = None
    init_supernet: bool = True
    val_images: int | None = None

    def __post_init__(self):
        _check(self, positive=("epochs", "batch_size", "lr", "max_steps", "val_images"))
        if not 0 <= self.kd_weight <= 1:
            raise DataError(f"kd_weight must lie in [0, 1], got {self.kd_weight}")

    def classifier(self, seed: int, *, with_teacher: bool) -> ClassifierConfig:
        return ClassifierConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=seed,
                                kd_weight=self.kd_weight if with_teacher else 0.0, max_steps=self.max_steps,
                                val_images=self.val_images)


@dataclass(frozen=True)
class BaselineSettings:
    """The pipeline's random baseline: networks drawn uniformly from the space whose predicted
    latency (the first budgeted table) lies within `tolerance` of the found network's, each
    retrained with the found network's recipe. Search earns its keep only if the found network
    beats their median."""

    random_networks: int = 0  # 0: no baseline
    tolerance: float = 0.05

    def __post_init__(self):
        if not isinstance(self.random_networks, int) or self.random_networks < 0:
            raise DataError(f"baseline random_networks must be an integer >= 0, got {self.random_networks!r}")
        if not 0 < self.tolerance < 1:
            raise DataError(f"baseline tolerance must lie in (0, 1), got {self.tolerance}")


@dataclass(frozen=True)
class ExportSettings:
    to: str = "onnx"  # onnx | tflite | tensorrt (ONNX is always produced)
    precisions: tuple[str, ...] = ("fp32",)
    calibration_data: str | None = None  # int8: a dataset or .npy [the model's training data]
    dynamic_batch: bool = False
    keep_nchw: bool = False
    opset: int = 17
    # LiteRT: the kernels the graph is shaped for (host.py): xnnpack (LiteRT's default), builtin or reference
    op_resolver: str | None = None

    def __post_init__(self):
        from dna_deploy.host import LITERT_OP_RESOLVERS

        if self.to not in EXPORT_TARGETS:
            raise DataError(f"export target {self.to!r}: {suggest(self.to, EXPORT_TARGETS)}")
        if self.op_resolver is not None and self.to != "tflite":
            raise DataError(f"op_resolver {self.op_resolver!r} is for LiteRT exports (--to tflite), not {self.to}")
        if self.op_resolver is not None and self.op_resolver not in LITERT_OP_RESOLVERS:
            raise DataError(f"LiteRT op resolver {self.op_resolver!r}: {suggest(self.op_resolver, LITERT_OP_RESOLVERS)}")
        bad = [p for p in self.precisions if p not in TARGET_PRECISIONS[self.to]]
        if bad:
            raise DataError(f"{self.to} cannot produce precision {bad[0]!r}; choose {', '.join(TARGET_PRECISIONS[self.to])}")
        if not self.precisions:
            raise DataError(f"export to {self.to}: name at least one precision")


@dataclass(frozen=True)
class VerifySettings:
    """Tolerances left at None take the precision's defaults (deploy/verify.py)."""

    max_images: int | None = None
    atol: float | None = None
    rtol: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop_pts: float | None = None
    max_latency_error_pct: float | None = None
    max_extra_rounds: int | None = None  # latency: extra rounds while unconfirmed [9] (runtimes/base.time_in_rounds)
    # a deployed network that clearly misses a device's latency budget: a warning, not a failure
    latency_advisory: bool = False

    def __post_init__(self):
        _check(self, positive=("max_images", "atol", "rtol", "max_latency_error_pct"), counts=("max_extra_rounds",))
        if self.min_top1_agreement is not None and not 0 <= self.min_top1_agreement <= 1:
            raise DataError(f"min_top1_agreement is a fraction in [0, 1], got {self.min_top1_agreement}")
        if self.max_accuracy_drop_pts is not None and not 0 <= self.max_accuracy_drop_pts <= 100:
            raise DataError(f"max_accuracy_drop_pts is in percentage points [0, 100], got {self.max_accuracy_drop_pts}")

    def overrides(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("max_images", "max_extra_rounds", "latency_advisory") and v is not None}


@dataclass(frozen=True)
class DeviceBudget:
    """One latency table of the search: a device spec and its budget (ms, or a fraction of the way
    from the smallest to the largest network's predicted latency)."""

    device: str
    budget_ms: float | None = None
    budget_fraction: float | None = None
    # where the device is profiled and verified: local, ssh://user@host[:port], adb://SERIAL (targets/)
    target: str | None = None

    def __post_init__(self):
        if self.target is not None and not isinstance(self.target, str):
            raise DataError(f"device {self.device!r}: target must be a string like ssh://user@host, got {self.target!r}"[:200])
        if self.budget_ms is not None and self.budget_fraction is not None:
            raise DataError(f"device {self.device!r}: give budget_ms or budget_fraction, not both")
        if self.budget_ms is not None and not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise DataError(f"device {self.device!r}: budget_ms must be a positive number of milliseconds, "
                            f"got {self.budget_ms}")
        if self.budget_fraction is not None and not 0 <= self.budget_fraction <= 1:
            raise DataError(f"device {self.device!r}: budget_fraction must lie in [0, 1], got {self.budget_fraction}")


@dataclass(frozen=True)
class ProgressiveSettings:
    """DNA+: round r+1 distils from round r's retrained winner."""

    rounds: int = 1

    def __post_init__(self):
        _check(self, positive=("rounds",))


# ---------------------------------------------------------------- reading user-written mappings
def _type_ok(value, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, typing.get_args(tp)[0]) for v in value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict) or isinstance(value, tp)
    return True


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def from_mapping(cls, mapping, *, where: str, fixed: dict | None = None):
    """Build settings `cls` from a user-written mapping: an unknown key is named with the nearest
    valid one, a wrong type with the expected one; nested settings are read the same way."""
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise DataError(f"{where}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in (fixed or {})]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r}; {suggest(str(unknown[0]), names)}")
    values = dict(fixed or {})
    for key, value in mapping.items():
        tp = hints[key]
        if not _type_ok(value, tp):
            raise DataError(f"{where}: '{key}' must be {_type_name(tp)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise DataError(f"{where}: '{key}' must be a finite number, got {value!r}")
        nested = [t for t in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(t)]
        if nested and isinstance(value, dict):
            value = from_mapping(nested[0], value, where=f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        if isinstance(value, int) and not isinstance(value, bool) and float in (typing.get_args(tp) or (tp,)) \
                and int not in (typing.get_args(tp) or (tp,)):
            value = float(value)
        values[key] = value
    for f in dataclasses.fields(cls):
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise DataError(f"{where}: missing key {f.name!r}")
    try:
        return cls(**values)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def to_mapping(settings) -> dict:
    """Plain data (for fingerprints and JSON)."""
    return dataclasses.asdict(settings)


def cli_args(settings, *, skip: tuple[str, ...] = (), defaults=None) -> list[str]:
    """The CLI flags that reproduce these settings: `--field-name value` for every field that is set
    and differs from `defaults` (the class defaults unless given); booleans as --x / --no-x."""
    base = defaults if defaults is not None else type(settings)()
    args: list[str] = []
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in skip or value is None or value == getattr(base, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, tuple):
            for v in value:
                args += [flag, str(v)]
        else:
            args += [flag, repr(value) if isinstance(value, float) else str(value)]  # repr: no digit lost
    return args
