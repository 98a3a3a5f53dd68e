"""Every command against bad input: a non-zero exit, one `error:` line, no traceback, and no file
changed -- not the inputs, not the shipped tables and device specs."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.io import shipped_dir

runner = CliRunner()
TINY_ARCH = "k3e3.skip|k3e3.k3e3.skip|k3e3.k3e3.skip|k3e3.skip"
ORT_TABLE = "x86-cpu-onnxruntime__tiny.json"


def snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model):
    """Valid and broken artifacts of every kind, in one folder."""
    from dna_deploy.select.search import synthetic_ratings
    from dna_deploy.space import load_space

    d = tmp_path_factory.mktemp("fuzz")
    tiny = load_space("tiny")
    table = json.loads((shipped_dir("latency_tables") / ORT_TABLE).read_text())
    (d / "table.json").write_text(json.dumps(table))
    bad = json.loads(json.dumps(table))
    bad["calibration"]["a"] = 0
    (d / "table_a0.json").write_text(json.dumps(bad))
    bad = json.loads(json.dumps(table))
    del bad["meta"]["device"]
    (d / "table_nodevice.json").write_text(json.dumps(bad))
    foreign = json.loads(json.dumps(table))
    foreign["meta"]["host"] = {"cpu": "Intel(R) Xeon(R) Platinum 8488C", "cpu_flags_sha256": "0" * 16, "cores": 2,
                               "machine": "x86_64"}
    (d / "table_foreign.json").write_text(json.dumps(foreign))
    ratings = synthetic_ratings(tiny, seed=0)
    (d / "ratings.json").write_text(json.dumps(ratings))
    r = json.loads(json.dumps(ratings))
    del r["blocks"]
    (d / "ratings_noblocks.json").write_text(json.dumps(r))
    r = json.loads(json.dumps(ratings))
    del next(iter(r["blocks"][1]["candidates"].values()))["loss"]
    (d / "ratings_noloss.json").write_text(json.dumps(r))
    r = json.loads(json.dumps(ratings))
    next(iter(r["blocks"][2]["candidates"].values()))["loss"] = math.nan
    (d / "ratings_nan.json").write_text(json.dumps(r))
    (d / "text.pt").write_text("not a checkpoint\n")
    torch.save({"format": "dna-deploy-teacher/1", "arch": TINY_ARCH, "state_dict": {}}, d / "teacher_nospace.pt")
    shutil.copyfile(tiny_model[0], d / "model.pt")
    (d / "a_file").write_text("x")
    for name in ("empty", "oneclass"):
        for split in ("train", "val"):
            (d / name / split).mkdir(parents=True)
    from PIL import Image

    for split in ("train", "val"):
        (d / "oneclass" / split / "cat").mkdir()
        for i in range(3):
            Image.new("RGB", (40, 40), (i * 40, 10, 10)).save(d / "oneclass" / split / "cat" / f"{i}.png")
    (d / "supernet_empty").mkdir()
    good = {"space": "tiny", "devices": [{"device": "x86-cpu-onnxruntime", "budget_ms": 0.2}]}
    variants = {
        "budget_typo": {**good, "devices": [{"device": "x86-cpu-onnxruntime", "budget": 0.2}]},
        "retrain_typo": {**good, "retrain": {"epoch": 1}},
        "export_typo": {**good, "export": [{"to": "tflite", "precision": ["int8"]}]},
        "train_typo": {**good, "train": {"epoch": 5}},
        "top_typo": {**good, "serach": {}},
        "bad_type": {**good, "rate": {"calib_images": "many"}},
        "bad_device": {**good, "devices": [{"device": "x86-cpu-onnxruntme", "budget_ms": 0.2}]},
        "no_devices": {"space": "tiny"},
        "dnapp_rounds": {**good, "train": {"method": "dna++"}, "progressive": {"rounds": 2}},
        "negative_extra_rounds": {**good, "profile": {"max_extra_rounds": -1}},
        "fractional_extra_rounds": {**good, "verify": {"max_extra_rounds": 1.5}},
    }
    for name, cfg in variants.items():
        (d / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "garbage.npy").write_text("not an array\n")
    (d / "torch_int8.yaml").write_text("name: t8\nruntime: torch\nprecision: int8\n")
    (d / "good.yaml").write_text(yaml.safe_dump(good))
    (d / "broken.yaml").write_text("space: [tiny\n")
    return d


def cases(d: Path) -> list[tuple[list[str], str]]:
    """(arguments, a fragment the one error line must hold)."""
    t, r, m = str(d / "table.json"), str(d / "ratings.json"), str(d / "model.pt")
    return [
        (["space", "show", "--space", "nope"], "nope"),
        (["space", "describe", "k3e3", "--space", "tiny"], "block"),
        (["space", "describe", "k9e0.x|k3e3.skip.skip|k3e3.skip.skip|k3e3.skip", "--space", "tiny"], "op"),
        (["space", "sample", "-s", "tiny", "-n", "0"], "-n"),
        (["space", "show", "-s", "tiny", "-f", "yaml"], "--format"),
        (["devices", "list", "-f", "xml"], "--format"),
        (["profile", "-d", "nope", "-s", "tiny"], "unknown device"),
        (["profile", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "-o", str(d / "a_file" / "t.json")], "a_file"),
        (["profile", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "--rounds", "0"], "--rounds"),
        (["profile", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "-o", str(shipped_dir("latency_tables") / ORT_TABLE)],
         "shipped"),
        (["profile", "predict", "-t", str(d / "none.json"), TINY_ARCH], "not found"),
        (["profile", "predict", "-t", str(d / "table_a0.json"), TINY_ARCH], "slope"),
        (["profile", "predict", "-t", str(d / "table_nodevice.json"), TINY_ARCH], "meta.device"),
        (["profile", "predict", "-t", t, "k3e3"], "block"),
        (["profile", "predict", "-t", t, "-s", "dna-mbconv", str(_mbconv_arch())], "measured for space"),
        (["profile", "validate", "-t", str(shipped_dir("latency_tables") / ORT_TABLE), "-s", "tiny"], "not calibrating"),
        (["profile", "validate", "-t", str(d / "table_foreign.json")], "another host"),
        (["profile", "validate", "-t", t, "-n", "3", "-o", str(d / "out_table.json")], "at least 6"),
        (["profile", "validate", "-t", t, "-n", "26", "--held-out", "23", "-o", str(d / "out_table.json")], "--held-out"),
        (["profile", "run-bundle", str(d / "none.zip")], "not found"),
        (["profile", "bundle", "-d", "nope", "-s", "tiny", "-o", str(d / "b.zip")], "unknown device"),
        (["teacher", "train", "-s", "tiny", "-o", str(d / "a_file" / "t.pt")], "a_file"),
        (["teacher", "train", "-s", "tiny", "-o", str(d / "t.pt"), "--epochs", "0"], "--epochs"),
        (["teacher", "train", "-s", "tiny", "-o", str(d / "t.pt"), "--data", str(d / "nodata")], "not found"),
        (["teacher", "train", "-s", "tiny", "-o", str(d / "t.pt"), "--data", str(d / "empty")], "class"),
        (["teacher", "train", "-s", "tiny", "-o", str(d / "t.pt"), "--data", str(d / "oneclass")], "at least 2"),
        (["train", "-s", "tiny", "--teacher", str(d / "none.pt"), "-o", str(d / "sn")], "not found"),
        (["train", "-s", "tiny", "--teacher", str(d / "text.pt"), "-o", str(d / "sn")], "not a dna-deploy checkpoint"),
        (["train", "-s", "tiny", "--teacher", str(d / "teacher_nospace.pt"), "-o", str(d / "sn")], "lacks 'space'"),
        (["train", "-s", "tiny", "--teacher", m, "-o", str(d / "sn"), "--blocks", "x"], "--blocks"),
        (["train", "-s", "tiny", "--teacher", "torchvision:resnet18", "-o", str(d / "sn")], "--teacher-weights"),
        (["train", "-s", "tiny", "--teacher", m, "-o", str(d / "a_file")], "is a file"),
        (["rate", "-s", "tiny", "--supernet", str(d / "supernet_empty"), "--teacher", m, "-o", str(d / "r.json")],
         "no trained block"),
        (["rate", "-s", "tiny", "--supernet", str(d / "supernet_empty"), "--teacher", m, "-o", str(d / "r.json"),
          "--calib-images", "0"], "--calib-images"),
        (["search", "-r", str(d / "ratings_noblocks.json"), "-s", "tiny"], "blocks"),
        (["search", "-r", str(d / "ratings_noloss.json"), "-s", "tiny"], "rating"),
        (["search", "-r", str(d / "ratings_nan.json"), "-s", "tiny"], "not a finite number"),
        (["search", "-r", r, "-s", "tiny", "-t", t, "-b", "nan"], "positive finite"),
        (["search", "-r", r, "-s", "tiny", "-t", t, "-b", "0.0001"], "smallest reachable"),
        (["search", "-r", r, "-s", "tiny", "-t", t, "-b", "0.3", "--confirm-top", "2", "--confirm-step", "0.5"],
         "confirm-step"),
        (["search", "-r", r, "-s", "tiny", "-t", t, "-b", "1", "-b", "2"], "one table per budget"),
        (["search", "-r", r, "-s", "tiny", "--top-k", "0"], "--top-k"),
        (["search", "-r", r, "-s", "tiny", "-f", "yaml"], "--format"),
        (["search", "-r", r, "-s", "tiny", "-o", str(d / "a_file" / "s.json")], "a_file"),
        (["retrain", "-s", "tiny", "-a", "k3e3", "-o", str(d / "re")], "block"),
        (["retrain", "-s", "tiny", "-a", TINY_ARCH, "-o", str(d / "a_file")], "is a file"),
        (["retrain", "-s", "tiny", "-a", TINY_ARCH, "-o", str(d / "re"), "--epochs", "0"], "--epochs"),
        (["export", "-w", str(d / "none.pt"), "-o", str(d / "ex")], "not found"),
        (["export", "-w", m, "--to", "onnx", "-p", "int8", "-o", str(d / "ex")], "cannot produce"),
        (["export", "-w", m, "--to", "coreml", "-o", str(d / "ex")], "coreml"),
        (["export", "-w", m, "-o", str(d / "a_file")], "is a file"),
        (["export", "-w", str(d / "text.pt"), "-o", str(d / "ex")], "not a dna-deploy checkpoint"),
        (["verify", str(d / "supernet_empty")], "model.json"),
        (["verify", str(d / "supernet_empty"), "--max-images", "0"], "--max-images"),
        (["run", str(d / "none.yaml")], "not found"),
        (["run", str(d / "budget_typo.yaml")], "did you mean 'budget_ms'"),
        (["run", str(d / "retrain_typo.yaml")], "did you mean 'epochs'"),
        (["run", str(d / "export_typo.yaml")], "did you mean 'precisions'"),
        (["run", str(d / "train_typo.yaml")], "did you mean 'epochs'"),
        (["run", str(d / "top_typo.yaml")], "did you mean 'search'"),
        (["run", str(d / "bad_type.yaml")], "must be an integer"),
        (["run", str(d / "bad_device.yaml")], "unknown device"),
        (["run", str(d / "no_devices.yaml")], "missing key 'devices'"),
        (["run", str(d / "list.yaml")], "expected a mapping"),
        (["run", str(d / "broken.yaml")], "cannot be parsed"),
        (["run", str(d / "good.yaml"), "--out", str(d / "a_file")], "a_file"),
        (["verify", str(d / "a_file")], "model.json"),
        (["profile", "-d", str(d / "torch_int8.yaml"), "-s", "tiny", "-o", str(d / "t8.json")], "int8"),
        (["profile", "predict", "-t", t, TINY_ARCH, "--space", str(d / "none.yaml")], "not found"),
        (["run", str(d / "dnapp_rounds.yaml")], "DNA++"),
        (["run", str(d / "negative_extra_rounds.yaml")], "max_extra_rounds must be a whole number >= 0"),
        (["run", str(d / "fractional_extra_rounds.yaml")], "max_extra_rounds"),
        (["export", "-w", m, "--to", "tflite", "-p", "int8", "--calibration-data", str(d / "garbage.npy"), "-o",
          str(d / "ex")], "not a numeric .npy"),
        (["verify", str(d / "supernet_empty"), "--min-top1-agreement", "97"], "fraction"),
        (["nope"], "No such command"),
        (["search"], "Missing option"),
    ]


def _mbconv_arch():
    import random

    from dna_deploy.space import load_space

    return load_space("dna-mbconv").sample(random.Random(0))


def test_bad_inputs_fail_cleanly_and_change_nothing(inputs):
    watched = (inputs, shipped_dir("latency_tables"), shipped_dir("devices"))
    before = snapshot(*watched)
    all_cases = cases(inputs)
    assert len(all_cases) >= 40
    problems = []
    for args, fragment in all_cases:
        r = runner.invoke(app, args)
        out = r.output
        lines = [line for line in out.splitlines() if line.startswith("error:")]
        if r.exit_code == 0:
            problems.append(f"{args}: exit 0")
        elif "Traceback" in out or (r.exception is not None and not isinstance(r.exception, SystemExit)):
            problems.append(f"{args}: traceback {r.exception!r}")
        elif len(lines) != 1:
            problems.append(f"{args}: expected one error line, got {out[-500:]!r}")
        elif fragment.lower() not in lines[0].lower():
            problems.append(f"{args}: {fragment!r} not in {lines[0]!r}")
    assert not problems, "\n".join(problems)
    after = snapshot(*watched)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"files changed or created: {changed}"
