"""TensorRT's host-side half, which needs no GPU: the op model an engine is built from on the target,
with its int8 calibration images beside it (int8 tables could never be profiled without them)."""

import numpy as np
import onnx
import torch

from dna_deploy.runtimes.tensorrt import TensorRTRunner, calibration_file


def test_an_int8_op_model_carries_its_calibration_images(tmp_path):
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    example = torch.randn(1, 3, 16, 16)
    images = np.random.default_rng(1).standard_normal((4, 3, 16, 16)).astype(np.float32)
    path = TensorRTRunner.prepare_artifact(conv, example, tmp_path, name="op", precision="int8", calibration=images)
    onnx.checker.check_model(onnx.load(path))
    assert np.array_equal(np.load(calibration_file(path), allow_pickle=False), images)
    # without images: random ones of the op's input shape (latency does not depend on the values)
    path = TensorRTRunner.prepare_artifact(conv, example, tmp_path, name="op2", precision="int8")
    assert np.load(calibration_file(path)).shape == (8, 3, 16, 16)
    fp16 = TensorRTRunner.prepare_artifact(conv, example, tmp_path, name="op3", precision="fp16")
    assert not calibration_file(fp16).exists()
