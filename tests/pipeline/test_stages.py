"""Stage declarations without running them: table names, reproduce-command pairing."""

import shutil

import pytest

from dna_deploy.io import shipped_dir
from dna_deploy.pipeline.config import parse_pipeline
from dna_deploy.pipeline.stages import RunContext, SearchStage, TablesStage


def test_a_device_given_as_a_spec_file_names_its_table_by_the_spec(tmp_path):
    spec = tmp_path / "my_pi.yaml"
    spec.write_text("name: my-pi\nruntime: onnxruntime\n")
    cfg = parse_pipeline({"space": "tiny", "devices": [{"device": str(spec), "budget_ms": 1.0}]}, where="p")
    ctx = RunContext(cfg, tmp_path / "run")
    assert TablesStage().outputs(ctx) == ["tables/my-pi__tiny.json"]
    assert str(TablesStage().commands(ctx)[0][6]).endswith("tables/my-pi__tiny.json")


def test_search_command_pairs_each_budget_with_its_table(tmp_path):
    cfg = parse_pipeline({"space": "tiny", "devices": [{"device": "x86-cpu-litert"},
                                                       {"device": "x86-cpu-onnxruntime", "budget_ms": 0.2}]}, where="p")
    ctx = RunContext(cfg, tmp_path)
    (tmp_path / "tables").mkdir()
    for name in ("x86-cpu-litert__tiny.json", "x86-cpu-onnxruntime__tiny.json"):
        shutil.copyfile(shipped_dir("latency_tables") / name, tmp_path / "tables" / name)
    args = [str(a) for a in SearchStage().commands(ctx)[0]]
    tables = [args[i + 1] for i, a in enumerate(args) if a == "-t"]
    budgets = [args[i + 1] for i, a in enumerate(args) if a == "-b"]
    assert tables[0].endswith("x86-cpu-onnxruntime__tiny.json") and budgets == ["0.2"]  # the budgeted table comes first


def test_the_imagenet_example_parses_and_covers_the_scale_settings():
    """examples/imagenet.yaml is what a user edits: every key must be one the pipeline knows."""
    from pathlib import Path

    from dna_deploy.io import read_structured
    from dna_deploy.pipeline.config import parse_pipeline

    path = Path(__file__).resolve().parents[2] / "examples" / "imagenet.yaml"
    cfg = parse_pipeline(read_structured(path, what="pipeline file"), where=str(path))
    assert cfg.compute.device == "auto" and cfg.compute.workers == 8 and cfg.compute.checkpoint_every == 500
    assert cfg.train.feature_cache == "none" and cfg.rate.rate_images == 10000 and cfg.retrain.val_images == 10000
    assert cfg.teacher.torchvision == "efficientnet_b0"


def test_the_vit_tiny_example_parses():
    """examples/vit-tiny.yaml, the transformer main job: a LiteRT budget, the random baseline, int8 export."""
    from pathlib import Path

    from dna_deploy.pipeline.config import load_pipeline

    cfg = load_pipeline(Path(__file__).resolve().parents[2] / "examples" / "vit-tiny.yaml")
    assert cfg.space == "vit-tiny" and cfg.devices[0].device == "x86-cpu-litert" and cfg.devices[0].budget_fraction
    assert cfg.baseline.random_networks == 3 and cfg.export[0].precisions == ("fp32", "int8")


def test_named_datasets_and_baseline_settings_are_checked(tmp_path):
    from dna_deploy.errors import DataError
    from dna_deploy.pipeline.config import load_pipeline

    p = tmp_path / "p.yaml"
    p.write_text("space: tiny\ndata: fashion-mnist\ndevices: [{device: x86-cpu-onnxruntime}]\nbaseline: {random_networks: 2}\n")
    cfg = load_pipeline(p)
    assert cfg.data == "fashion-mnist" and cfg.baseline.random_networks == 2 and cfg.baseline.tolerance == 0.05
    p.write_text("space: tiny\ndata: fashion\ndevices: [{device: x86-cpu-onnxruntime}]\n")
    with pytest.raises(DataError, match="neither one of mnist, fashion-mnist nor a folder"):
        load_pipeline(p)
    p.write_text("space: tiny\ndevices: [{device: x86-cpu-onnxruntime}]\nbaseline: {random_networks: -1}\n")
    with pytest.raises(DataError, match="random_networks must be an integer >= 0"):
        load_pipeline(p)


def test_a_litert_export_takes_the_kernel_set_of_the_runs_litert_devices(tmp_path):
    """The export's graph must be the one the LiteRT tables time (nn/rewrite.py): a builtin-kernel
    device makes the tflite export builtin; devices on two kernel sets need it named."""
    from dna_deploy.errors import DataError
    from dna_deploy.pipeline.stages import ExportStage

    builtin = tmp_path / "builtin.yaml"
    builtin.write_text("name: litert-builtin\nruntime: litert\nop_resolver: builtin\n")
    export = [{"to": "tflite", "precisions": ["fp32"]}]
    cfg = parse_pipeline({"space": "tiny", "devices": [{"device": str(builtin)}], "export": export}, where="p")
    ctx = RunContext(cfg, tmp_path / "run")
    assert [e.op_resolver for e in ExportStage.targets(ctx)] == ["builtin"]
    assert "--op-resolver" in [str(a) for a in ExportStage().commands(ctx)[0]]
    default = parse_pipeline({"space": "tiny", "devices": [{"device": "x86-cpu-litert"}], "export": export}, where="p")
    assert [e.op_resolver for e in ExportStage.targets(RunContext(default, tmp_path / "d"))] == [None]
    both = parse_pipeline({"space": "tiny", "devices": [{"device": str(builtin)}, {"device": "x86-cpu-litert"}],
                           "export": export}, where="p")
    with pytest.raises(DataError, match=r"different kernel sets \(builtin, xnnpack\).*set op_resolver on the tflite export"):
        ExportStage().settings(RunContext(both, tmp_path / "b"))
