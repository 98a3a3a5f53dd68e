"""ONNX -> TensorRT serialized engine (fp32 / fp16 / int8 with an entropy calibrator), with a timing cache.

Needs an NVIDIA GPU, the `tensorrt` Python package (pip install 'dna-deploy[tensorrt]' on such a
machine) and PyTorch with CUDA, whose tensors serve as device buffers for calibration.

Caches are only valid for the TensorRT version and GPU that wrote them, and a calibration cache
only for the graph and images it was computed on. So every cache file is named by a key over
those (`device_tag`, `cache_key`), never by the model's file name: a rebuilt model, an upgraded
TensorRT or another GPU never picks up a stale cache.

fp32 engines clear the TF32 flag: TensorRT enables TF32 by default on Ampere and newer, whose
10-bit mantissa fails a 1e-4 comparison with PyTorch.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError, RuntimeUnavailable
from dna_deploy.io import atomic_write_bytes


def require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise RuntimeUnavailable("TensorRT is not installed: on an NVIDIA machine, "
                                 "pip install 'dna-deploy[tensorrt]'") from None
    import torch

    if not torch.cuda.is_available():
        raise RuntimeUnavailable("TensorRT needs an NVIDIA GPU, and torch sees none here (torch.cuda.is_available() is False)")
    return trt


def device_tag(trt) -> str:
    """TensorRT version + GPU name, safe for a file name: what engines and timing caches depend on."""
    import torch

    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
    return f"trt{trt.__version__}-{gpu}"


def cache_key(trt, onnx_bytes: bytes, precision: str, calibration: np.ndarray | None = None) -> str:
    """Content hash of the graph (+ calibration images), the precision and the device tag."""
    h = hashlib.sha256(onnx_bytes)
    h.update(precision.encode())
    h.update(device_tag(trt).encode())
    if calibration is not None:
        h.update(np.ascontiguousarray(calibration, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def _entropy_calibrator(trt, images: np.ndarray, batch_size: int, cache_path: Path | None):
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """Feeds real, already-normalised images; caches the scales so rebuilds skip calibration."""

        def __init__(self):
            super().__init__()
            self.images = np.ascontiguousarray(images, dtype=np.float32)
            self.index = 0
            self.device = torch.empty((batch_size, *self.images.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self):
            return batch_size

        def get_batch(self, names):
            if self.index + batch_size > len(self.images):
                return None
            batch = torch.from_numpy(self.images[self.index:self.index + batch_size])
            self.device.copy_(batch)
            torch.cuda.synchronize()  # the copy is done before TensorRT reads the buffer on its own stream
            self.index += batch_size
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self):
            if cache_path is not None and cache_path.is_file():
                return cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache):
            if cache_path is not None:
                atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()


def onnx_to_tensorrt(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, *, precision: str = "fp16",
                     calibration: np.ndarray | None = None, cache_dir: str | os.PathLike | None = None,
                     workspace_mib: int = 2048, max_batch: int | None = None) -> Path:
    """Build and serialise an engine (the TensorRT 10 API: pyproject pins tensorrt < 11).
    max_batch: a dynamic-batch ONNX gets a profile 1..max_batch. cache_dir: where the timing cache
    (per device tag) and int8 calibration cache (per cache key) live. int8 calibrates with batches
    of the engine's own input batch (a static batch-1 graph is fed one image at a time)."""
    if precision not in ("fp32", "fp16", "int8"):
        raise DataError(f"TensorRT precision {precision!r}; choose fp32, fp16 or int8")
    if precision == "int8" and calibration is None:
        raise DataError("int8 TensorRT needs calibration images (--calibration-data or a dataset)")
    trt = require_tensorrt()
    onnx_bytes = Path(onnx_path).read_bytes()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DataError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16 and precision == "fp16":
            raise DataError("this GPU has no fast fp16; build fp32 instead")
        config.set_flag(trt.BuilderFlag.FP16)
    calibration_cache = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if cache_dir is not None:
            calibration_cache = Path(cache_dir) / f"calibration-{cache_key(trt, onnx_bytes, precision, calibration)}.cache"
    inp = network.get_input(0)
    engine_batch = inp.shape[0] if inp.shape[0] > 0 else (max_batch or 1)
    if precision == "int8":
        if len(calibration) < engine_batch:
            raise DataError(f"int8 TensorRT calibration needs at least {engine_batch} images (the engine's batch); "
                            f"got {len(calibration)}")
        config.int8_calibrator = _entropy_calibrator(trt, calibration, engine_batch, calibration_cache)
    if any(d == -1 for d in inp.shape):
        fixed = tuple(inp.shape)[1:]
        profile = builder.create_optimization_profile()
        top = max_batch or 1
        profile.set_shape(inp.name, (1, *fixed), (top, *fixed), (top, *fixed))
        config.add_optimization_profile(profile)
        if precision == "int8":
            config.set_calibration_profile(profile)
    cache_obj = None
    timing_cache = Path(cache_dir) / f"timing-{device_tag(trt)}.cache" if cache_dir is not None else None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache_obj = config.create_timing_cache(blob)
        config.set_timing_cache(cache_obj, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DataError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
    if cache_obj is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return atomic_write_bytes(engine_path, bytes(serialized))
