"""What machine and software a measurement was taken on, and whether another machine is the same.

Latency tables and their calibration are only valid on the host that measured them. A bare CPU
brand ("AMD EPYC") is not enough: two EPYC generations, or the same CPU with other ISA extensions
exposed by the hypervisor, time ops differently. So a host is identified by its CPU model name, a
hash of its CPU flags, its core count, the machine type and the runtime's package versions.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

# The packages whose versions change a runtime's timings (recorded per table).
RUNTIME_PACKAGES = {"onnxruntime": ("onnxruntime", "onnx"), "litert": ("ai-edge-litert", "onnx2tf", "tensorflow"),
                    "torch": ("torch",), "tensorrt": ("tensorrt", "torch")}
# How dna-deploy shapes a runtime's graphs, recorded beside the package versions: a table measured
# on graphs built another way does not predict this version's exports (nn/rewrite.py). LiteRT's
# graph depends on the kernels that run it: XNNPACK (its default) runs a depthwise convolution over
# 5x5 several times slower than its taps explain, so those are split; LiteRT's builtin kernels run
# the 7x7 at full speed and the split 1.8-4.4x slower (bench/int8_kernels.py), so they get the
# graph as trained.
GRAPH_RECIPE_KEY = {"litert": "dna-deploy litert graph"}
# LiteRT's kernel sets: xnnpack = builtin kernels + the XNNPACK delegate (its default); builtin = the
# optimised builtin kernels alone; reference = the reference kernels (slow, for debugging).
LITERT_OP_RESOLVERS = ("xnnpack", "builtin", "reference")
LITERT_SPLIT_RESOLVERS = (None, "xnnpack")  # None: the runtime's default kernels (XNNPACK)


def splits_large_depthwise(runtime: str, op_resolver: str | None = None) -> bool:
    """Whether this runtime's graph for these kernels has its large depthwise convolutions split."""
    return runtime == "litert" and op_resolver in LITERT_SPLIT_RESOLVERS


def graph_recipe(runtime: str, op_resolver: str | None = None) -> dict:
    """{recipe key: how the graph is shaped} for runtimes dna-deploy reshapes, else {}."""
    if runtime not in GRAPH_RECIPE_KEY:
        return {}
    how = ("depthwise convolutions over 5x5 split" if splits_large_depthwise(runtime, op_resolver)
           else f"as trained, for the {op_resolver} kernels")
    return {GRAPH_RECIPE_KEY[runtime]: f"2: {how} (nn/rewrite.py)"}
# Fields of host_identity that must agree for a table measured elsewhere to be used here.
IDENTITY_FIELDS = ("cpu", "cpu_flags_sha256", "cores", "machine")


def package_versions(*packages: str) -> dict:
    """Installed versions (None when absent), recorded in tables and export sidecars."""
    from importlib import metadata

    out = {}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def runtime_versions(runtime: str, op_resolver: str | None = None) -> dict:
    """What a table or a measurement on this runtime depends on here: package versions and, for
    runtimes whose graphs dna-deploy shapes, the graph recipe for these kernels."""
    return {**package_versions(*RUNTIME_PACKAGES[runtime], "numpy"), **graph_recipe(runtime, op_resolver)}


def _cpuinfo() -> tuple[str, str]:
    """(model name, sorted flags joined by spaces) from /proc/cpuinfo; platform strings elsewhere."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.processor(), platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:  # x86 | Arm
                flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    return model, flags


def host_description(device: str = "cpu") -> dict:
    """The identity of the machine measuring (CPU model, flags hash, cores, machine, OS; GPU name on cuda)."""
    model, flags = _cpuinfo()
    info = {"cpu": model, "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform()}
    if device.startswith("cuda"):
        try:
            import torch

            info["gpu"] = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - the GPU name is informative only; torch may lack CUDA
            info["gpu"] = None
    return info


def host_differences(recorded: dict | None, here: dict) -> list[str]:
    """Human-readable differences between a recorded host identity and this one ([] = same host).

    Tables written before the flags hash existed lack it: that counts as a difference, because
    nothing then shows the machines are the same."""
    recorded = recorded or {}
    fields = IDENTITY_FIELDS + (("gpu",) if "gpu" in here or "gpu" in recorded else ())
    return [f"{f}: {recorded.get(f)!r} there, {here.get(f)!r} here" for f in fields if recorded.get(f) != here.get(f)]


def version_differences(recorded: dict | None, here: dict) -> list[str]:
    recorded = recorded or {}
    return [f"{p} {recorded.get(p)} there, {here.get(p)} here" for p in sorted(set(recorded) | set(here))
            if recorded.get(p) != here.get(p)]
