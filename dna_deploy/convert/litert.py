"""ONNX -> LiteRT (.tflite) through onnx2tf: fp32, fp16 and full-integer int8 from one conversion.

onnx2tf quirks handled here: it rewrites the ONNX file it is given (we convert a copy); it fetches a
sample-image file from the internet unless one is in the working directory (we put ours there, made
from the caller's calibration images); its models take NHWC input; and it always writes a TensorFlow
SavedModel, which only its int8 path reads (fp32/fp16 convert from a concrete function): that write
is 40-45 % of a conversion, so fp32/fp16-only conversions skip it, and models made only to be timed
skip it for int8 too (`for_timing`). And it runs the TFLite converter
once per variant it knows (fp32, fp16, and with int8 also dynamic-range, integer, full-integer and
two int16-activation variants: seven conversions, three of them calibrating) whatever was asked;
the variants not asked for are skipped (`_only_variants`). The kept ones are the same graphs (ops,
tensors, quantisation, outputs; only Keras's generated tensor names differ, as between any two
conversions). Timed once here on three tiny networks: an int8 conversion about 4 s instead of 8,
fp32 about 2.7 instead of 3.2 (bench/latency_fidelity.py shows the effect on whole validations).
Models made to be timed also skip strict mode and the throw-away Keras layers of the binary ops'
scalar check (`_static_rank_in_binary_ops`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import types
from pathlib import Path

import numpy as np

from dna_deploy.errors import DataError, RuntimeUnavailable

PRECISION_SUFFIX = {"fp32": "_float32.tflite", "fp16": "_float16.tflite", "int8": "_full_integer_quant.tflite"}
_ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
# the onnx2tf whose internals the timing path patches (_without_saved_model, _static_rank_in_binary_ops;
# pyproject pins it): another version takes the full path
PATCHED_ONNX2TF = "1.28.8"
# onnx2tf's binary ops, each of which asks `tf.rank(x) == 0` of both inputs (see _static_rank_in_binary_ops)
_BINARY_OPS = ("Add", "Sub", "Mul", "Div")


@contextlib.contextmanager
def _quiet_native_stderr():
    """TensorFlow's C++ logging writes to fd 2 before Python can filter it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _load_torch_compiler_first() -> None:
    """TensorFlow's bundled native libraries make a later `import triton` in the same process crash
    (a segmentation fault), and torch imports triton on its first optimizer or compile. A pipeline
    that converts to LiteRT before it trains (DNA++, which has no teacher stage) would die there.
    Loading torch's compiler stack before TensorFlow avoids it."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001 - torch absent or without dynamo: nothing to protect
        pass


def require_onnx2tf():
    _load_torch_compiler_first()
    try:
        with _quiet_native_stderr():
            import onnx2tf  # noqa: F401
            import tensorflow  # noqa: F401
    except ImportError as e:
        raise RuntimeUnavailable(f"LiteRT conversion needs onnx2tf and TensorFlow ({e.name} missing): "
                                 "pip install 'dna-deploy[tflite]'") from None
    import onnx2tf

    return onnx2tf


@contextlib.contextmanager
def _without_saved_model(precisions: tuple[str, ...], *, for_timing: bool):
    """onnx2tf writes a TensorFlow SavedModel on every conversion, and its int8 path reads it back.
    Float-only conversions never read it, so its write does nothing here. With for_timing, the int8
    path skips it too: the SavedModel write and load (over a quarter of an int8 block-model
    conversion) become the concrete function onnx2tf already traced for its fp32 model, which the int8 converter
    calibrates on directly (samples listed in input order: a frozen function has no signature to
    name them by). The graph, quantisation and outputs are the same (tests/runtimes/test_runtimes.py);
    only the SavedModel's SignatureDef is missing from the .tflite, which a deployed model keeps.
    What is patched is what onnx2tf PATCHED_ONNX2TF calls (it reads the loaded SavedModel
    only to log its signature); another onnx2tf version takes the full path.
    Enter this before _only_variants: that one wraps the factory methods set here."""
    import tensorflow as tf

    if "int8" not in precisions:
        saved_save = tf.saved_model.save
        tf.saved_model.save = lambda *args, **kwargs: None
        try:
            yield
        finally:
            tf.saved_model.save = saved_save
        return
    import onnx2tf

    if not for_timing or getattr(onnx2tf, "__version__", None) != PATCHED_ONNX2TF:
        yield
        return
    import tf_keras

    cls = tf.lite.TFLiteConverter
    saved = {name: vars(cls)[name] for name in ("from_concrete_functions", "from_saved_model")}
    saved_write, saved_load = tf_keras.export.ExportArchive.write_out, tf.saved_model.load
    traced = []  # the model's concrete function, from onnx2tf's fp32 converter (always made first)

    def from_concrete_functions(funcs, trackable_obj=None):
        traced[:] = funcs[:1]
        return saved["from_concrete_functions"].__get__(None, cls)(funcs, trackable_obj)

    def traced_function():
        if not traced:
            raise DataError("onnx2tf made its int8 model before its fp32 one; convert without for_timing")
        return traced[0]

    def from_saved_model(*args, **kwargs):
        converter = saved["from_concrete_functions"].__get__(None, cls)([traced_function()])
        convert = converter.convert

        def convert_with_listed_samples():
            samples = converter.representative_dataset
            if samples is not None:
                samples = getattr(samples, "input_gen", samples)
                converter.representative_dataset = lambda: (
                    list(s.values()) if isinstance(s, dict) else s for s in samples())
            return convert()

        converter.convert = convert_with_listed_samples
        return converter

    def load_signature(*args, **kwargs):  # what onnx2tf reads of the loaded SavedModel: names and specs
        function = traced_function()
        outputs = function.structured_outputs
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        signature = types.SimpleNamespace(
            structured_input_signature=((), {spec.name: spec for spec in function.structured_input_signature[0]}),
            structured_outputs={f"output_{i}": spec for i, spec in enumerate(outputs)})
        return types.SimpleNamespace(signatures={"serving_default": signature})

    cls.from_concrete_functions = staticmethod(from_concrete_functions)
    cls.from_saved_model = staticmethod(from_saved_model)
    tf_keras.export.ExportArchive.write_out = lambda self, *args, **kwargs: None
    tf.saved_model.load = load_signature
    try:
        yield
    finally:
        for name, descriptor in saved.items():
            setattr(cls, name, descriptor)
        tf_keras.export.ExportArchive.write_out, tf.saved_model.load = saved_write, saved_load


class _StaticRankTensorFlow:
    """The tensorflow module, except that tf.rank of a Keras graph tensor whose rank is known is
    that rank as a Python int (see _static_rank_in_binary_ops)."""

    def __init__(self, tf, keras_tensor_type):
        self._tf, self._keras_tensor_type = tf, keras_tensor_type

    def __getattr__(self, name):
        return getattr(self._tf, name)

    def rank(self, x, name=None):
        if isinstance(x, self._keras_tensor_type) and x.shape.rank is not None:
            return x.shape.rank
        return self._tf.rank(x, name=name)


@contextlib.contextmanager
def _static_rank_in_binary_ops(*, for_timing: bool):
    """onnx2tf's Add, Sub, Mul and Div ask `tf.rank(x) == 0` of both inputs to spot scalars, and
    take the answer only when it has `.numpy()`. On a Keras graph tensor it never does, so the
    answer is always "not a scalar"; but asking builds two Keras layers (a rank and a comparison)
    that are then thrown away, each tracing its own function: a sixth of an int8 block-model
    conversion (1.37-1.52 s -> 1.15-1.20 s per model over 30 tiny blocks, two alternated runs of
    an ad-hoc loop, not a bench). Within those four
    ops, a Keras tensor's known rank comes back as a Python int, which has no `.numpy()` either: the
    same answer, no layers. Arrays and eager tensors still go to tf.rank (their answer is used).
    Only for_timing, only onnx2tf PATCHED_ONNX2TF (whose four ops use tf.rank only this way)."""
    import onnx2tf

    if not for_timing or getattr(onnx2tf, "__version__", None) != PATCHED_ONNX2TF:
        yield
        return
    import importlib

    import tensorflow as tf
    from tf_keras.src.engine.keras_tensor import KerasTensor

    modules = [importlib.import_module(f"onnx2tf.ops.{op}") for op in _BINARY_OPS]
    static = _StaticRankTensorFlow(tf, KerasTensor)
    for module in modules:
        module.tf = static
    try:
        yield
    finally:
        for module in modules:
            module.tf = tf


# the TFLite converter runs onnx2tf makes, told apart by the settings it gives each converter
_VARIANT_OF_PRECISION = {"fp32": "float32", "fp16": "float16", "int8": "full_integer_quant"}


def _converter_variant(converter) -> str:
    import tensorflow as tf

    ops = set(converter.target_spec.supported_ops)
    if tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 in ops:
        return "int16_activations"
    if converter.representative_dataset is not None:  # calibrated: float or integer at the model's edges
        return "integer_quant" if converter.inference_input_type in (None, tf.float32) else "full_integer_quant"
    if converter.optimizations:
        return "float16" if tf.float16 in set(converter.target_spec.supported_types) else "dynamic_range_quant"
    return "float32"


@contextlib.contextmanager
def _only_variants(precisions: tuple[str, ...]):
    """While onnx2tf converts, the converter runs for variants not in `precisions` return no bytes
    (onnx2tf writes them to files nobody reads); the ones asked for run unchanged."""
    import tensorflow as tf

    wanted = {_VARIANT_OF_PRECISION[p] for p in precisions}
    cls = tf.lite.TFLiteConverter
    saved = {name: vars(cls)[name] for name in ("from_concrete_functions", "from_saved_model")}

    def guarded(factory):
        def make(*args, **kwargs):
            converter = factory(*args, **kwargs)
            convert = converter.convert
            converter.convert = lambda: convert() if _converter_variant(converter) in wanted else b""
            return converter
        return make

    for name in saved:
        setattr(cls, name, guarded(getattr(cls, name)))
    try:
        yield
    finally:
        for name, descriptor in saved.items():
            setattr(cls, name, descriptor)


@contextlib.contextmanager
def _chdir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def onnx_to_litert(onnx_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                   precisions: tuple[str, ...] = ("fp32",), calibration: np.ndarray | None = None,
                   keep_nchw: bool = False, name: str = "model", quiet: bool = True,
                   for_timing: bool = False) -> dict[str, Path]:
    """Convert once, keep the requested precisions as `<name>_<precision>.tflite` in out_dir.

    calibration: NCHW float32 images already normalised as the model expects; required for int8.
    keep_nchw: keep the input in NCHW (default: NHWC, LiteRT's native layout).
    for_timing: a model made to be timed (profiling and validation build thousands), not shipped.
    onnx2tf then skips its strict-mode accuracy correction (it evaluates ops against ONNX Runtime
    to choose between transpositions, which changed nothing in the 34 tiny, vit-tiny and
    dna-mbconv networks, fp32 and int8, converted both ways here) and the int8 path its SavedModel
    round trip (_without_saved_model). Together about 12 % of an fp32 and 28 % of an int8
    block-model conversion in one process, for the same graph; then the binary ops' scalar check
    stops building throw-away Keras layers (_static_rank_in_binary_ops). tests/runtimes/test_runtimes.py
    checks ops, tensors, per-channel quantisation and outputs against a deployable conversion.
    """
    bad = set(precisions) - set(PRECISION_SUFFIX)
    if bad:
        raise DataError(f"LiteRT precision {sorted(bad)[0]!r} is not supported; choose from fp32, fp16, int8")
    if "int8" in precisions and calibration is None:
        raise DataError("int8 LiteRT export needs calibration images: pass --calibration-data (or a dataset)")
    onnx2tf = require_onnx2tf()
    from dna_deploy.convert.onnx import INPUT_NAME, onnx_io

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = onnx_io(onnx_path)["inputs"][INPUT_NAME]
    with tempfile.TemporaryDirectory(prefix="onnx2tf-") as tmp:
        tmp = Path(tmp)
        work_onnx = tmp / f"{name}.onnx"
        shutil.copyfile(onnx_path, work_onnx)  # onnx2tf rewrites its input
        # onnx2tf's self-check wants 20 sample images (NHWC, 128x128x3) in cwd, else it downloads some.
        _write_sample_file(tmp / _ONNX2TF_SAMPLE, calibration)
        kwargs = dict(input_onnx_file_path=str(work_onnx), output_folder_path=str(tmp / "saved_model"),
                      not_use_onnxsim=True, non_verbose=quiet, verbosity="error" if quiet else "info",
                      disable_strict_mode=for_timing)
        if keep_nchw:
            kwargs["keep_ncw_or_nchw_or_ncdhw_input_names"] = [INPUT_NAME]
        if "int8" in precisions:
            calib = np.asarray(calibration, dtype=np.float32)
            if calib.ndim != 4 or list(calib.shape[1:]) != list(shape[1:]):
                raise DataError(f"calibration images have shape {list(calib.shape)}, the model takes "
                                f"[N, {', '.join(map(str, shape[1:]))}]")
            if not keep_nchw:
                calib = calib.transpose(0, 2, 3, 1)
            np.save(tmp / "calib.npy", calib)
            c = calib.shape[-1] if not keep_nchw else calib.shape[1]
            zeros = np.zeros((1, 1, 1, c), np.float32) if not keep_nchw else np.zeros((1, c, 1, 1), np.float32)
            kwargs.update(output_integer_quantized_tflite=True, quant_type="per-channel",
                          custom_input_op_name_np_data_path=[[INPUT_NAME, str(tmp / "calib.npy"), zeros, zeros + 1]],
                          input_quant_dtype="int8", output_quant_dtype="int8")
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
        sink = io.StringIO()
        with _chdir(tmp), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _quiet_native_stderr(), \
                _without_saved_model(precisions, for_timing=for_timing), _only_variants(precisions), \
                _static_rank_in_binary_ops(for_timing=for_timing):
            try:
                onnx2tf.convert(**kwargs)
            except SystemExit as e:  # onnx2tf calls sys.exit on conversion errors
                raise DataError(f"onnx2tf failed to convert {onnx_path}: {sink.getvalue()[-500:]}") from e
        produced = {}
        for p in precisions:
            src = tmp / "saved_model" / f"{name}{PRECISION_SUFFIX[p]}"
            if not src.is_file() or src.stat().st_size == 0:  # empty: a converter run skipped by mistake
                raise DataError(f"onnx2tf produced no {p} model for {onnx_path}: {sink.getvalue()[-500:]}")
            dst = out_dir / f"{name}_{p}.tflite"
            shutil.copyfile(src, dst.with_suffix(".tmp"))
            os.replace(dst.with_suffix(".tmp"), dst)
            produced[p] = dst
    return produced


def _write_sample_file(path: Path, calibration: np.ndarray | None) -> None:
    """20 NHWC 128x128x3 images in [0, 1]: from the caller's images when they are RGB, else noise."""
    rng = np.random.default_rng(0)
    if calibration is not None and calibration.ndim == 4 and calibration.shape[1] == 3:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.asarray(calibration[:20], np.float32))
        x = F.interpolate(x, size=(128, 128), mode="bilinear", align_corners=False)
        x = (x - x.amin()) / (x.amax() - x.amin() + 1e-8)
        sample = x.permute(0, 2, 3, 1).numpy()
        if len(sample) < 20:
            sample = np.concatenate([sample] * (20 // len(sample) + 1))[:20]
    else:
        sample = rng.random((20, 128, 128, 3), dtype=np.float32)
    np.save(path, sample.astype(np.float32))
