"""TensorRT: an engine built from ONNX on the target GPU, timed with CUDA events.

Accepts a serialized .engine, or an .onnx that it builds: the engine is cached beside the ONNX
under a key of the graph's content, the precision, the TensorRT version and the GPU name.
Input copies, execution and output reads all run on one CUDA stream, in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dna_deploy.runtimes.base import Runner


class TensorRTRunner(Runner):
    name = "tensorrt"
    extra = "tensorrt"
    artifact_suffix = ".onnx"  # engines are built on the target, not on the host

    @classmethod
    def unavailable_reason(cls, device: str = "cuda") -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT is not installed: on an NVIDIA machine, pip install 'dna-deploy[tensorrt]'"
        import torch

        if not torch.cuda.is_available():
            return "TensorRT needs an NVIDIA GPU, and none is visible here"
        return None

    @classmethod
    def prepare_artifact(cls, module, example, workdir: Path, *, name: str, precision: str = "fp32", calibration=None,
                         op_resolver=None):
        from dna_deploy.convert.onnx import torch_to_onnx

        return torch_to_onnx(module, example, Path(workdir) / f"{name}.onnx")

    def _prepare(self) -> None:
        import tensorrt as trt
        import torch

        from dna_deploy.convert.tensorrt import cache_key, onnx_to_tensorrt

        path = Path(self.model)
        if path.suffix == ".onnx":
            engine = path.with_name(f"{path.stem}-{cache_key(trt, path.read_bytes(), self.precision)}.engine")
            if not engine.is_file():
                onnx_to_tensorrt(path, engine, precision=self.precision, cache_dir=path.parent)
            path = engine
        self.torch = torch
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.trt_runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers, self.input_name, self.output_name = {}, None, None
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(max(1, d) for d in self.engine.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_name = name
                self.context.set_input_shape(name, shape)
                self.input_shape = shape
            else:
                self.output_name = name
            self.buffers[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def _to_native(self, x: np.ndarray):
        buf = self.buffers[self.input_name]
        with self.torch.cuda.stream(self.stream):  # the copy is queued before the execution that reads it
            buf.copy_(self.torch.from_numpy(x).to(buf.dtype))
        return buf

    def _run(self, native):
        self.context.execute_async_v3(self.stream.cuda_stream)
        return self.buffers[self.output_name]

    def _sync(self) -> None:
        self.stream.synchronize()

    def _timed_run(self, native) -> float:
        self.start.record(self.stream)
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.end.record(self.stream)
        self.end.synchronize()
        return float(self.start.elapsed_time(self.end))

    def _from_native(self, y) -> np.ndarray:
        self.stream.synchronize()  # the execution that wrote y has finished
        with self.torch.cuda.stream(self.stream):
            out = y.float().cpu().numpy()
        return out

    def _close(self) -> None:
        del self.context, self.engine, self.buffers
