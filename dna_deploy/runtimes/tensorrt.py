"""TensorRT: an engine built from ONNX on the target GPU, timed with CUDA events.

Accepts a serialized .engine, or an .onnx that it builds: the engine is cached beside the ONNX
under a key of the graph's content, the precision, the TensorRT version and the GPU name.
Input copies, execution and output reads all run on one CUDA stream, in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError
from dna_deploy.runtimes.base import Runner


def calibration_file(onnx_path: Path) -> Path:
    """Where an op model's int8 calibration images wait for the engine build on the target."""
    return Path(onnx_path).with_suffix(".calibration.npy")


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

        onnx_path = torch_to_onnx(module, example, Path(workdir) / f"{name}.onnx")
        if precision == "int8":  # the engine is built on the target, calibrated there on these images
            if calibration is None:  # latency does not depend on the values (as for LiteRT's op models)
                calibration = np.random.default_rng(0).standard_normal((8, *example.shape[1:])).astype(np.float32)
            np.save(calibration_file(onnx_path), np.ascontiguousarray(calibration, dtype=np.float32))
        return onnx_path

    def _prepare(self) -> None:
        import tensorrt as trt
        import torch

        from dna_deploy.convert.tensorrt import cache_key, onnx_to_tensorrt

        path = Path(self.model)
        if path.suffix == ".onnx":
            calibration = None
            if self.precision == "int8":
                if not calibration_file(path).is_file():
                    raise DataError(f"int8 TensorRT needs calibration images beside {path} "
                                    f"({calibration_file(path).name}); prepare it with TensorRTRunner.prepare_artifact")
                calibration = np.load(calibration_file(path), allow_pickle=False)
            engine = path.with_name(f"{path.stem}-{cache_key(trt, path.read_bytes(), self.precision, calibration)}.engine")
            if not engine.is_file():
                onnx_to_tensorrt(path, engine, precision=self.precision, calibration=calibration, cache_dir=path.parent)
            path = engine
        self.torch = torch
        self.trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.trt_runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers, self.input_name, self.output_name = {}, None, None
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        for name in inputs:  # input shapes first: a dynamic dimension takes the profile's optimum
            shape = tuple(self.engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                shape = tuple(self.engine.get_tensor_profile_shape(name, 0)[1])
            self.context.set_input_shape(name, shape)
            self.input_name, self.input_shape = name, shape
        for name in names:  # then every buffer at the shape the context resolves for it
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(self.engine.get_tensor_dtype(name)))).dtype
            if name not in inputs:
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
