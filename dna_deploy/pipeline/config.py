"""The pipeline file: every key of every section is checked before anything runs.

A section's keys are the fields of its settings dataclass (dna_deploy/settings.py), the same ones
the CLI takes its defaults from; an unknown key is named with the nearest valid one. Files the
stages will need (space, devices, data, teacher checkpoint) are checked here too, so a typo fails
in a second, not after four minutes of earlier stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from dna_deploy.errors import DataError, suggest
from dna_deploy.io import read_structured
from dna_deploy.settings import (
    BaselineSettings,
    ComputeSettings,
    DeviceBudget,
    DistillConfig,
    ExportSettings,
    ProfileSettings,
    ProgressiveSettings,
    RateSettings,
    RetrainSettings,
    SearchSettings,
    TeacherSettings,
    VerifySettings,
    from_mapping,
)


@dataclass(frozen=True)
class PipelineConfig:
    space: str  # a preset name or a space file
    devices: tuple[DeviceBudget, ...]
    name: str = "pipeline"
    output: str | None = None
    seed: int = 0
    data: str = "mnist"
    teacher: TeacherSettings | None = field(default_factory=TeacherSettings)  # None: DNA++ without a teacher
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    train: DistillConfig = field(default_factory=DistillConfig)
    rate: RateSettings = field(default_factory=RateSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    baseline: BaselineSettings = field(default_factory=BaselineSettings)
    export: tuple[ExportSettings, ...] = (ExportSettings(),)
    verify: VerifySettings = field(default_factory=VerifySettings)
    progressive: ProgressiveSettings = field(default_factory=ProgressiveSettings)
    compute: ComputeSettings = field(default_factory=ComputeSettings)  # where teacher, train, rate, retrain run

    def with_teacher_checkpoint(self, path: str | Path) -> "PipelineConfig":
        """DNA+: the next round distils from this round's retrained network."""
        return replace(self, teacher=TeacherSettings(checkpoint=str(path)))


SECTIONS = {"teacher": TeacherSettings, "profile": ProfileSettings, "rate": RateSettings, "search": SearchSettings,
            "retrain": RetrainSettings, "baseline": BaselineSettings, "verify": VerifySettings, "progressive": ProgressiveSettings,
            "compute": ComputeSettings}
SCALARS = {"name": str, "output": str, "seed": int, "data": str, "space": str}
TOP_KEYS = ("name", "output", "seed", "data", "space", "teacher", "devices", "profile", "train", "rate", "search",
            "retrain", "baseline", "export", "verify", "progressive", "compute")


def parse_pipeline(raw, *, where: str) -> PipelineConfig:
    """A PipelineConfig from the file's mapping, or one DataError naming the first problem."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping with keys {', '.join(TOP_KEYS)}")
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise DataError(f"{where}: unknown key {unknown[0]!r}; {suggest(str(unknown[0]), TOP_KEYS)}")
    for key in ("space", "devices"):
        if key not in raw:
            raise DataError(f"{where}: missing key {key!r}")
    values: dict = {}
    for key, tp in SCALARS.items():
        if key in raw and raw[key] is not None:
            v = raw[key]
            if not isinstance(v, tp) or isinstance(v, bool):
                raise DataError(f"{where}: '{key}' must be {'an integer' if tp is int else 'a string'}, got {v!r}")
            values[key] = v
    seed = values.get("seed", 0)
    for key, cls in SECTIONS.items():
        if raw.get(key) is not None:
            values[key] = from_mapping(cls, raw[key], where=f"{where}: '{key}'")
    values["train"] = from_mapping(DistillConfig, raw.get("train"), where=f"{where}: 'train'", fixed={"seed": seed})
    if values["train"].method == "dna++" and raw.get("teacher") is None:
        values["teacher"] = None  # teacher-free: no teacher stage, and retraining uses labels only
    devices = raw["devices"]
    if not isinstance(devices, list) or not devices:
        raise DataError(f"{where}: 'devices' must list at least one device, e.g. "
                        "[{device: x86-cpu-onnxruntime, budget_ms: 0.2}]")
    values["devices"] = tuple(from_mapping(DeviceBudget, d, where=f"{where}: devices[{i}]") for i, d in enumerate(devices))
    exports = raw.get("export")
    if exports is not None:
        if isinstance(exports, dict):
            exports = [exports]
        if not isinstance(exports, list) or not exports:
            raise DataError(f"{where}: 'export' must list targets, e.g. [{{to: tflite, precisions: [fp32, int8]}}]")
        values["export"] = tuple(from_mapping(ExportSettings, e, where=f"{where}: export[{i}]") for i, e in enumerate(exports))
        targets = [e.to for e in values["export"]]
        if len(set(targets)) != len(targets):
            raise DataError(f"{where}: 'export' lists a target twice; merge their precisions into one entry")
    if values.get("progressive") and values["progressive"].rounds > 1 and values["train"].method == "dna++":
        raise DataError(f"{where}: 'progressive' (DNA+) distils each round from the previous winner, which "
                        "DNA++ does not use; give train.method dna, or drop 'progressive'")
    return PipelineConfig(**values)


def check_references(cfg: PipelineConfig, *, where: str) -> None:
    """The files and names the stages will need exist (space, devices, data, teacher files)."""
    from dna_deploy.data import DATASETS
    from dna_deploy.latency.devices import load_device
    from dna_deploy.space import load_space

    load_space(cfg.space)
    for d in cfg.devices:
        load_device(d.device)
        if d.target is not None:
            from dna_deploy.targets import parse_target

            parse_target(d.target)  # a malformed target fails here, before any stage runs
    if cfg.data not in DATASETS and not Path(cfg.data).is_dir():
        raise DataError(f"{where}: data {cfg.data!r} is neither one of {', '.join(DATASETS)} nor a folder with "
                        "train/ and val/")
    t = cfg.teacher or TeacherSettings(checkpoint=None, train=None)
    for what, path in (("teacher checkpoint", t.checkpoint), ("teacher weights", t.weights)):
        if path is not None and not Path(path).is_file():
            raise DataError(f"{where}: {what} not found: {path}")
    for e in cfg.export:
        if e.calibration_data and e.calibration_data not in DATASETS and not Path(e.calibration_data).exists():
            raise DataError(f"{where}: calibration data not found: {e.calibration_data}")


def load_pipeline(path: str | Path) -> PipelineConfig:
    where = f"pipeline file {path}"
    cfg = parse_pipeline(read_structured(path, what="pipeline file"), where=where)
    check_references(cfg, where=where)
    return cfg
