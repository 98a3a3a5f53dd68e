"""Runtimes behind one interface (see base.Runner). Loaded lazily: importing this imports no runtime.

Adding a runtime: one file here with a Runner subclass, its line in _RUNTIMES below, its packages in
host.RUNTIME_PACKAGES (the versions a latency table records), and a device spec in devices/.
"""

from __future__ import annotations

import importlib

from dna_deploy.errors import DnaDeployError, RuntimeUnavailable, suggest

_RUNTIMES = {
    "onnxruntime": "dna_deploy.runtimes.onnxruntime:OnnxRuntimeRunner",
    "litert": "dna_deploy.runtimes.litert:LiteRTRunner",
    "torch": "dna_deploy.runtimes.torch:TorchRunner",
    "tensorrt": "dna_deploy.runtimes.tensorrt:TensorRTRunner",
}

RUNTIME_NAMES = tuple(_RUNTIMES)


def runner_class(name: str):
    if name not in _RUNTIMES:
        raise DnaDeployError(f"unknown runtime {name!r}; {suggest(name, _RUNTIMES)}")
    module, cls = _RUNTIMES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def require_runtime(name: str, device: str = "cpu"):
    """The runner class, or RuntimeUnavailable naming what to install."""
    cls = runner_class(name)
    reason = cls.unavailable_reason(device)
    if reason:
        raise RuntimeUnavailable(reason)
    return cls
