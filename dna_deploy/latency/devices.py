"""Device specs: which runtime, precision, threads and batch a latency table is measured under."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from dna_deploy.errors import DataError, DnaDeployError, check_keys, suggest
from dna_deploy.io import read_structured, shipped_dir

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    runtime: str
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 1
    batch: int = 1
    notes: str = ""
    op_resolver: str | None = None  # LiteRT: xnnpack (its default), builtin or reference kernels
    machine: str | None = None  # the target's architecture as platform.machine() names it (x86_64, aarch64)
    cpu_mask: str | None = None  # phones: the taskset mask benchmark_model runs under (f0: CPUs 4-7, the big cores)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["op_resolver"] is None:  # the runtime's default: tables from before this field stay equal
            del d["op_resolver"]
        if d["machine"] is None:  # not stated: tables from before this field stay equal
            del d["machine"]
        if d["cpu_mask"] is None:
            del d["cpu_mask"]
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "device spec") -> "DeviceSpec":
        from dna_deploy.outputs import safe_name
        from dna_deploy.runtimes import RUNTIME_NAMES

        check_keys(d, known=cls.__dataclass_fields__, required=("name", "runtime"), where=source, error=DataError)
        safe_name(d["name"], what=f"{source}: device name")  # it names the table file
        for k in ("runtime", "device", "precision", "notes",
                  *(k for k in ("machine", "cpu_mask") if d.get(k) is not None)):
            if k in d and not isinstance(d[k], str):
                raise DataError(f"{source}: {k} must be a string, got {d[k]!r}"[:200])
        spec = cls(**d)
        if spec.runtime not in RUNTIME_NAMES:
            raise DataError(f"{source}: unknown runtime {spec.runtime!r}; {suggest(spec.runtime, RUNTIME_NAMES)}")
        if spec.precision not in PRECISIONS:
            raise DataError(f"{source}: precision {spec.precision!r}; choose {', '.join(PRECISIONS)}")
        if spec.runtime == "torch" and (spec.precision == "int8" or (spec.precision == "fp16" and spec.device != "cuda")):
            raise DataError(f"{source}: the torch runtime times fp32 (cpu/cuda) or fp16 (cuda), not "
                            f"{spec.precision} on {spec.device}; use a LiteRT or TensorRT spec for int8")
        if spec.op_resolver is not None:
            from dna_deploy.runtimes import runner_class

            allowed = runner_class(spec.runtime).op_resolvers
            if spec.op_resolver not in allowed:
                raise DataError(f"{source}: op_resolver {spec.op_resolver!r} for {spec.runtime}; "
                                + (f"choose {', '.join(allowed)}" if allowed else f"{spec.runtime} has only its default"))
        for k in ("threads", "batch"):
            v = getattr(spec, k)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 4096:
                raise DataError(f"{source}: {k} must be a whole number from 1 to 4096, got {v!r}")
        return spec


def host_mismatch(spec: DeviceSpec, here: dict | None = None) -> list[str]:
    """Why timing `spec` on this machine would not measure the device it names: another
    architecture, or more threads than this machine has cores ([] when nothing differs that can be
    seen from here). `here` is a host_description(); this machine's when left out."""
    from dna_deploy.host import host_description

    here = here or host_description()
    out = []
    if spec.machine and spec.machine != here.get("machine"):
        out.append(f"{spec.name} is an {spec.machine} device; this machine is {here.get('machine')} ({here.get('cpu')})")
    if here.get("cores") and spec.threads > here["cores"]:
        out.append(f"{spec.name} runs {spec.threads} threads; this machine has {here['cores']} cores")
    return out


def devices_dir() -> Path:
    return shipped_dir("devices")


def list_devices() -> list[DeviceSpec]:
    return [load_device(p) for p in sorted(devices_dir().glob("*.yaml"))]


def load_device(name_or_path: str | Path) -> DeviceSpec:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml", ".json", ".toml") and p.exists():
        return DeviceSpec.from_dict(read_structured(p, what="device spec"), source=str(p))
    shipped = devices_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return DeviceSpec.from_dict(read_structured(shipped, what="device spec"), source=str(shipped))
    names = [q.stem for q in devices_dir().glob("*.yaml")]
    raise DnaDeployError(f"unknown device {str(name_or_path)!r}; {suggest(str(name_or_path), names)} "
                         f"(or give a device .yaml file)")
