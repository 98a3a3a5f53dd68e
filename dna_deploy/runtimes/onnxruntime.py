"""ONNX Runtime: CPU execution provider; CUDA and TensorRT providers where installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dna_deploy.runtimes.base import Runner

_PROVIDERS = {"cpu": ["CPUExecutionProvider"],
              "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
              "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"
    artifact_suffix = ".onnx"

    @classmethod
    def unavailable_reason(cls, device: str = "cpu") -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed: pip install onnxruntime"
        if device not in _PROVIDERS:
            return f"onnxruntime device {device!r}: choose cpu, cuda or tensorrt"
        if _PROVIDERS[device][0] not in ort.get_available_providers():
            return (f"onnxruntime here has no {_PROVIDERS[device][0]} "
                    f"(available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu on an NVIDIA machine")
        return None

    @classmethod
    def prepare_artifact(cls, module, example, workdir: Path, *, name: str, precision: str = "fp32", calibration=None,
                         op_resolver=None):
        from dna_deploy.convert.onnx import torch_to_onnx

        return torch_to_onnx(module, example, Path(workdir) / f"{name}.onnx")

    def _prepare(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model), so, providers=_PROVIDERS[self.device])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, native: np.ndarray):
        return self.session.run([self.output_name], {self.input_name: native})[0]

    def _close(self) -> None:
        del self.session
