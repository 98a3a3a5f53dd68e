"""Export a trained model: ONNX always (the hub format), then LiteRT or TensorRT as asked.

The sidecar model.json records what was actually produced: every artifact with its runtime,
precision, input layout and dtype, the architecture, normalisation, the source weights' hash and
tool versions. Nothing is silently downgraded: a precision that cannot be produced is an error.
"""

from __future__ import annotations

import datetime as _dt
import glob
import os
import shutil
from pathlib import Path

import numpy as np

from dna_deploy import __version__
from dna_deploy.errors import DataError
from dna_deploy.host import package_versions
from dna_deploy.io import exclusive_lock, read_json, sha256_file, write_json
from dna_deploy.outputs import check_output
from dna_deploy.settings import ExportSettings

SIDECAR = "model.json"
LEFTOVER_MARK = ".dna-deploy-export-tmp"  # in a temporary folder of an export until it is swapped in


def calibration_images(spec: str | Path | None, ckpt: dict, *, n: int = 200, seed: int = 0) -> np.ndarray:
    """Real images for int8 calibration: a .npy (N,C,H,W, normalised) or a dataset name/folder
    (its training split; never the validation images verification reports on)."""
    import torch

    from dna_deploy.data import load_data

    shape = ckpt["input"]["shape"]
    spec = spec or ckpt.get("data")
    if spec is None:
        raise DataError("int8 needs calibration images: pass --calibration-data (a dataset or an .npy file)")
    if str(spec).endswith(".npy"):
        p = Path(spec)
        if not p.is_file():
            raise DataError(f"calibration data not found: {p}")
        try:
            arr = np.load(p, allow_pickle=False).astype(np.float32)
        except (ValueError, OSError, TypeError) as e:  # not an array file, or objects / strings in it
            raise DataError(f"calibration data {p} is not a numeric .npy array ({str(e).splitlines()[0][:120]})") from None
        if arr.ndim != 4 or len(arr) == 0 or list(arr.shape[1:]) != list(shape[1:]):
            raise DataError(f"calibration data {p} has shape {list(arr.shape)}; the model takes [N, {', '.join(map(str, shape[1:]))}]")
        return arr[:n]
    data = load_data(str(spec), shape[-1])
    if str(spec) == str(ckpt.get("data")) and ckpt.get("data_fingerprint") not in (None, data.fingerprint):
        # the model's own dataset, split differently than when it trained: the "training" images
        # calibrated on here could be its validation images
        raise DataError(f"calibration data {spec} splits differently (fingerprint {data.fingerprint}) than when the "
                        f"model trained on it ({ckpt['data_fingerprint']}); retrain, or calibrate with an .npy file")
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    images = torch.stack([data.train[i][0] for i in idx]).numpy()
    if list(images.shape[1:]) != list(shape[1:]):
        raise DataError(f"calibration data {spec} gives images of shape {list(images.shape[1:])}; the model takes "
                        f"{list(shape[1:])}")
    return images


def export_model(weights: str | Path, out_dir: str | Path, settings: ExportSettings = ExportSettings(), *,
                 arch: str | None = None) -> dict:
    """ONNX, then the settings' target and precisions, into out_dir with a model.json sidecar.

    Everything is built in a temporary folder beside out_dir and swapped in only when complete, so
    a failed export leaves an earlier export folder as it was (never a new model.onnx beside a
    stale model.json)."""
    import tempfile

    from dna_deploy.distill.checkpoints import load_model

    # refuse before writing anything when the converter is absent
    if settings.to == "tflite":
        from dna_deploy.convert.litert import require_onnx2tf

        require_onnx2tf()
    elif settings.to == "tensorrt":
        from dna_deploy.convert.tensorrt import require_tensorrt

        require_tensorrt()
    out_dir = Path(out_dir)
    calibration = settings.calibration_data
    check_output(out_dir, kind="export", replaces=True, what="export folder",
                 inputs=[weights, calibration if calibration and Path(calibration).exists() else None])
    model = load_model(weights, arch=arch)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir.parent / f".{out_dir.name}", what="export"):
        check_output(out_dir, kind="export", replaces=True, what="export folder")  # again, now that it is ours to write
        _remove_leftovers(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            (tmp / LEFTOVER_MARK).touch()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the swapped-in folder gets ordinary permissions
            try:
                sidecar = _export_into(weights, tmp, settings, model)
            except OSError as e:
                if e.filename is None and e.errno is not None:  # a full disk: say where it was writing
                    raise OSError(e.errno, e.strerror, str(out_dir)) from e
                raise
            if out_dir.exists():  # an earlier export of ours (check_output): swapped out, then removed
                old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
                (old / LEFTOVER_MARK).touch()
                out_dir.replace(old / "previous")
                tmp.replace(out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.replace(out_dir)
            (out_dir / LEFTOVER_MARK).unlink()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return sidecar


def _remove_leftovers(out_dir: Path) -> None:
    """Temporary folders that an export to out_dir left when it was killed, removed under out_dir's
    lock (so never one a running export uses): those holding the mark, and unmarked ones of older
    versions that hold only what an export writes."""
    for p in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*-*"):
        kind = p.name[len(out_dir.name) + 2:].split("-")[0]
        if p.is_dir() and not p.is_symlink() and kind in ("tmp", "old") and _is_leftover(p, kind):
            shutil.rmtree(p, ignore_errors=True)


def _is_leftover(p: Path, kind: str) -> bool:
    if (p / LEFTOVER_MARK).is_file():
        return True
    names = [q.name for q in p.iterdir()]
    if kind == "old":
        return names == ["previous"] and (p / "previous" / SIDECAR).is_file()
    return all(n in ("model.onnx", "model.litert.onnx", "weights.pt", SIDECAR) or n.endswith((".tflite", ".engine"))
               for n in names)


def _export_into(weights, out_dir: Path, settings: ExportSettings, model) -> dict:
    from dna_deploy.convert.onnx import onnx_io, torch_to_onnx

    to, precisions, calibration = settings.to, settings.precisions, settings.calibration_data
    dynamic_batch, keep_nchw, opset = settings.dynamic_batch, settings.keep_nchw, settings.opset
    space, a, net, ckpt = model
    import torch

    shape = ckpt["input"]["shape"]
    example = torch.randn(*shape)
    onnx_path = torch_to_onnx(net, example, out_dir / "model.onnx", opset=opset, dynamic_batch=dynamic_batch)
    io = onnx_io(onnx_path)
    artifacts = [{"path": "model.onnx", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32", "layout": "NCHW",
                  "input_dtype": "float32", "sha256": sha256_file(onnx_path), "opset": io["opset"],
                  "input_shape": io["inputs"]["input"]}]
    calib = None
    if "int8" in precisions:
        calib = calibration_images(calibration, ckpt)
    if to == "tflite":
        from dna_deploy.convert.litert import onnx_to_litert
        from dna_deploy.nn.rewrite import litert_graph

        # the graph LiteRT's tables are measured on for these kernels (nn/rewrite.py)
        litert_net = litert_graph(net, settings.op_resolver)
        litert_onnx = onnx_path if litert_net is net else torch_to_onnx(
            litert_net, example, out_dir / "model.litert.onnx", opset=opset, dynamic_batch=dynamic_batch)
        try:
            produced = onnx_to_litert(litert_onnx, out_dir, precisions=tuple(precisions), calibration=calib,
                                      keep_nchw=keep_nchw, name="model")
        finally:
            if litert_onnx != onnx_path:
                litert_onnx.unlink(missing_ok=True)
        for p, path in produced.items():
            artifacts.append({"path": path.name, "format": "tflite", "runtime": "litert", "precision": p,
                              "layout": "NCHW" if keep_nchw else "NHWC", "input_dtype": "int8" if p == "int8" else "float32",
                              "sha256": sha256_file(path),
                              "graph": "depthwise convolutions over 5x5 split (nn/rewrite.py)" if litert_net is not net
                              else "as trained",
                              "op_resolver": settings.op_resolver or "xnnpack",  # the kernels the graph is shaped for
                              "quantization": "full integer (int8 weights, activations, input and output), calibrated on "
                                              f"{len(calib)} training images" if p == "int8" else None})
    elif to == "tensorrt":
        from dna_deploy.convert.tensorrt import onnx_to_tensorrt

        for p in precisions:
            engine = onnx_to_tensorrt(onnx_path, out_dir / f"model_{p}.engine", precision=p, calibration=calib,
                                      cache_dir=out_dir, max_batch=8 if dynamic_batch else None)
            artifacts.append({"path": engine.name, "format": "tensorrt-engine", "runtime": "tensorrt", "precision": p,
                              "layout": "NCHW", "input_dtype": "float32", "sha256": sha256_file(engine)})
    weights_copy = out_dir / "weights.pt"
    shutil.copyfile(weights, weights_copy)
    sidecar = {"format": "dna-deploy-export/1", "arch": str(a), "space": space.name, "space_fingerprint": space.fingerprint,
               "input": {**ckpt["input"], "dynamic_batch": dynamic_batch}, "num_classes": ckpt["num_classes"],
               "source_weights": {"path": "weights.pt", "sha256": sha256_file(weights_copy)},
               "trained_on": ckpt.get("data"), "data_fingerprint": ckpt.get("data_fingerprint"), "train_metrics": ckpt.get("metrics"), "artifacts": artifacts,
               "versions": {"dna-deploy": __version__, **package_versions("torch", "onnx", "onnxruntime", "onnxslim", "onnx2tf",
                                                                    "tensorflow", "ai-edge-litert", "tensorrt")},
               "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json(out_dir / SIDECAR, sidecar)
    return sidecar


def load_export(out_dir: str | Path) -> dict:
    """An export's model.json, read as a file a user could have edited: the keys verify uses, of
    the right types, and file names that are plain names inside the folder."""
    from dna_deploy.outputs import safe_name

    d = read_json(Path(out_dir) / SIDECAR, what="export sidecar (model.json)")
    if not isinstance(d, dict) or d.get("format") != "dna-deploy-export/1":
        raise DataError(f"{out_dir} is not a dna-deploy export folder (no valid model.json)")
    where = f"{Path(out_dir) / SIDECAR}"
    weights, arts, inp = d.get("source_weights"), d.get("artifacts"), d.get("input")
    if not (isinstance(d.get("arch"), str) and isinstance(weights, dict) and isinstance(weights.get("sha256"), str)
            and isinstance(arts, list) and all(isinstance(a, dict) and isinstance(a.get("runtime"), str) for a in arts)
            and isinstance(inp, dict) and isinstance(inp.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 65536 for n in inp["shape"])):
        raise DataError(f"{where} lacks a valid arch, source_weights, artifacts or input shape; export again")
    for f in [weights.get("path")] + [a.get("path") for a in arts]:
        safe_name(f, what=f"{where}: file")  # never a path out of the folder
    return d
