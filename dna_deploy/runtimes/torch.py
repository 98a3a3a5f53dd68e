"""PyTorch eager on CPU, or CUDA with device-event timing (fp16 on CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dna_deploy.errors import RuntimeUnavailable
from dna_deploy.runtimes.base import Runner


class TorchRunner(Runner):
    name = "torch"
    artifact_suffix = ""  # the module itself; torch needs no conversion

    @classmethod
    def unavailable_reason(cls, device: str = "cpu") -> str | None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            return "torch sees no CUDA GPU here (torch.cuda.is_available() is False)"
        if device not in ("cpu", "cuda"):
            return f"torch device {device!r}: choose cpu or cuda"
        return None

    @classmethod
    def prepare_artifact(cls, module, example, workdir: Path, *, name: str, precision: str = "fp32", calibration=None,
                         op_resolver=None):
        return module.eval()

    def _prepare(self) -> None:
        import torch

        if self.precision == "int8":
            raise RuntimeUnavailable("the torch runtime times fp32 (CPU/CUDA) or fp16 (CUDA); for int8 use a "
                                     "LiteRT or TensorRT device spec")
        if self.precision == "fp16" and self.device != "cuda":
            raise RuntimeUnavailable("fp16 with the torch runtime needs device cuda (CPU fp16 kernels are not what "
                                     "deployment runs); use fp32 on CPU")
        self.torch = torch
        if self.device == "cpu":
            torch.set_num_threads(self.threads)
        self.dtype = torch.float16 if self.precision == "fp16" else torch.float32
        self.module = self.model.eval().to(self.device, self.dtype)
        if self.device == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _to_native(self, x: np.ndarray):
        return self.torch.from_numpy(x).to(self.device, self.dtype)

    def _run(self, native):
        with self.torch.inference_mode():
            return self.module(native)

    def _from_native(self, y) -> np.ndarray:
        return y.float().cpu().numpy()

    def _sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _timed_run(self, native) -> float:
        if self.device != "cuda":
            return super()._timed_run(native)
        self.start.record()
        self._run(native)
        self.end.record()
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))
