"""LiteRT (ai-edge-litert) interpreter with XNNPACK; op models come through the export path
(ONNX -> onnx2tf), so fusion and layout match what is deployed, with the graph shaped for the
kernels that run it (nn/rewrite.litert_graph)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dna_deploy.host import LITERT_OP_RESOLVERS
from dna_deploy.runtimes.base import Runner


class LiteRTRunner(Runner):
    name = "litert"
    extra = "tflite"
    op_resolvers = LITERT_OP_RESOLVERS  # xnnpack (default), builtin, reference: see host.py
    artifact_suffix = ".tflite"
    slow_to_prepare = True  # onnx2tf + TensorFlow: seconds per model

    def __init__(self, model, *, threads: int = 1, device: str = "cpu", precision: str = "fp32",
                 input_shape=None, layout: str = "nhwc", op_resolver: str | None = None):
        super().__init__(model, threads=threads, device=device, precision=precision, input_shape=input_shape,
                         op_resolver=op_resolver)
        self.layout = layout  # input layout of the .tflite: onnx2tf makes NHWC unless told to keep NCHW

    @classmethod
    def unavailable_reason(cls, device: str = "cpu") -> str | None:
        try:
            import ai_edge_litert.interpreter  # noqa: F401
        except ImportError:
            return "LiteRT is not installed: pip install 'dna-deploy[tflite]'"
        if device != "cpu":
            return f"LiteRT here runs on the CPU (XNNPACK); device {device!r} needs a GPU/NPU delegate on the target"
        return None

    converts_precisions_together = True

    @classmethod
    def prepare_artifact(cls, module, example, workdir: Path, *, name: str, precision: str = "fp32", calibration=None,
                         op_resolver=None):
        return cls._convert(module, example, workdir, name=name, precisions=(precision,), calibration=calibration,
                            op_resolver=op_resolver)[precision]

    @classmethod
    def prepare_artifacts(cls, module, example, workdir: Path, *, name: str, precisions: tuple[str, ...],
                          op_resolver=None) -> dict:
        """One onnx2tf run for every precision: the graph is built once (most of a conversion's time)."""
        return cls._convert(module, example, workdir, name=name, precisions=tuple(precisions), calibration=None,
                            op_resolver=op_resolver)

    @classmethod
    def _convert(cls, module, example, workdir: Path, *, name: str, precisions: tuple[str, ...], calibration,
                 op_resolver) -> dict:
        from dna_deploy.convert.litert import onnx_to_litert
        from dna_deploy.convert.onnx import torch_to_onnx
        from dna_deploy.nn.rewrite import litert_graph

        workdir = Path(workdir)
        onnx_path = torch_to_onnx(litert_graph(module, op_resolver), example, workdir / f"{name}.onnx")
        if "int8" in precisions and calibration is None:  # latency does not depend on the values
            calibration = np.random.default_rng(0).standard_normal((8, *example.shape[1:])).astype(np.float32)
        out = onnx_to_litert(onnx_path, workdir, precisions=precisions, calibration=calibration, name=name,
                             for_timing=True)  # the deployed graph, converted faster (its docstring)
        onnx_path.unlink()
        return out

    def _prepare(self) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        resolver = {None: OpResolverType.AUTO, "xnnpack": OpResolverType.AUTO,
                    "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                    "reference": OpResolverType.BUILTIN_REF}[self.op_resolver]
        self.interpreter = Interpreter(model_path=str(self.model), num_threads=self.threads,
                                       experimental_op_resolver_type=resolver)
        self.interpreter.allocate_tensors()
        self.inp = self.interpreter.get_input_details()[0]
        self.out = self.interpreter.get_output_details()[0]
        shape = tuple(int(d) for d in self.inp["shape"])
        self.input_shape = (shape[0], shape[3], shape[1], shape[2]) if self.layout == "nhwc" and len(shape) == 4 else shape

    def _to_native(self, x: np.ndarray):
        if self.layout == "nhwc" and x.ndim == 4:
            x = x.transpose(0, 2, 3, 1)
        dtype = self.inp["dtype"]
        if dtype != np.float32:  # full-integer model: quantise with the input's scale and zero point
            scale, zero = self.inp["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        return np.ascontiguousarray(x)

    def _run(self, native):
        self.interpreter.set_tensor(self.inp["index"], native)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.out["index"])

    def _from_native(self, y) -> np.ndarray:
        y = np.asarray(y)
        if self.out["dtype"] != np.float32:
            scale, zero = self.out["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        if self.layout == "nhwc" and y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y, dtype=np.float32)

    def _close(self) -> None:
        del self.interpreter
