"""Issue 35: never destroy what the user did not ask to replace, and take no hostile file or forged
number as true. Each case fails with one `error:` line (no traceback), and a "nothing destroyed"
case hashes the files around its output before and after. A walk over the CLI's commands checks
that every output option goes through the one rule (dna_deploy/outputs.py)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from dna_deploy.cli.app import app
from dna_deploy.io import shipped_dir

runner = CliRunner()
TINY_ARCH = "k3e3.skip|k3e3.k3e3.skip|k3e3.k3e3.skip|k3e3.skip"
ORT_TABLE = "x86-cpu-onnxruntime__tiny.json"
PRECIOUS = "the user's own work\n"


def snapshot(*folders: Path) -> dict:
    out = {}
    for folder in folders:
        for f in sorted(Path(folder).rglob("*")):
            if f.is_file() and not f.name.endswith(".lock"):  # an OS lock file holds nothing
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def shipped() -> tuple[Path, ...]:
    return shipped_dir("latency_tables"), shipped_dir("devices"), shipped_dir("examples")


def one_error(args: list[str], fragment: str) -> str:
    """Run a command that must fail: exit 1 or 2, one `error:` line holding `fragment`, no traceback."""
    r = runner.invoke(app, [str(a) for a in args])
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code != 0, f"{args}: exit 0\n{r.output[-800:]}"
    assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), \
        f"{args}: traceback {r.exception!r}\n{r.output[-1500:]}"
    assert len(lines) == 1, f"{args}: expected one error line, got {r.output[-1500:]!r}"
    assert fragment.lower() in lines[0].lower(), f"{args}: {fragment!r} not in {lines[0]!r}"
    assert len(lines[0]) < 700, f"{args}: an error line of {len(lines[0])} characters"
    return lines[0]


def refused_and_intact(args: list[str], fragment: str, *around: Path) -> str:
    """A "nothing destroyed" case: the files around the output (and the shipped folders) hash the
    same before and after, and nothing new appears there."""
    watched = tuple(around) + shipped()
    before = snapshot(*watched)
    line = one_error(args, fragment)
    after = snapshot(*watched)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"{args}: files changed or created: {changed}"
    return line


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text(PRECIOUS)
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return path


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_model):
    """A user's working folder: their own files, our artifacts, and hostile ones."""
    from dna_deploy.deploy.export import export_model
    from dna_deploy.select.search import synthetic_ratings
    from dna_deploy.settings import ExportSettings
    from dna_deploy.space import load_space

    d = tmp_path_factory.mktemp("hostile")
    tiny = load_space("tiny")
    _user_folder(d / "work")
    (d / "precious.json").write_text(PRECIOUS)
    (d / "precious.zip").write_text(PRECIOUS)
    shutil.copytree(tiny_model[0].parent, d / "retrain")  # model.pt, its metrics, its checkpoint
    (d / "retrain" / "my_notes.txt").write_text(PRECIOUS)
    shutil.copyfile(tiny_model[0], d / "model.pt")
    table = json.loads((shipped_dir("latency_tables") / ORT_TABLE).read_text())
    (d / "table.json").write_text(json.dumps(table))
    ratings = synthetic_ratings(tiny, seed=0)
    (d / "ratings.json").write_text(json.dumps(ratings))
    (d / "supernet_empty").mkdir()
    export_model(d / "model.pt", d / "ex", ExportSettings(to="onnx"))

    # a profiling bundle of ours (the torch runtime: only a manifest), and its manifest to forge
    r = runner.invoke(app, ["profile", "bundle", "-d", "x86-cpu-torch", "-s", "tiny", "-o", str(d / "b.zip")])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(d / "b.zip") as z:
        manifest = json.loads(z.read("manifest.json"))
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def _forged_table(d: Path, name: str, change) -> str:
    t = json.loads((d / "table.json").read_text())
    change(t)
    (d / name).write_text(json.dumps(t))
    return str(d / name)


def _forged_manifest(d: Path, change) -> dict:
    m = json.loads((d / "manifest.json").read_text())
    change(m)
    return m


def _first_entry(m: dict) -> dict:
    return next(iter(m["entries"].values()))


# ---------------------------------------------------------------- data loss
def test_export_never_deletes_a_folder_it_did_not_make(d):
    refused_and_intact(["export", "-w", d / "model.pt", "--to", "onnx", "-o", d / "work"], "not an export folder",
                       d / "work")
    refused_and_intact(["export", "-w", d / "retrain" / "model.pt", "--to", "onnx", "-o", d / "retrain"],
                       "input", d / "retrain")
    refused_and_intact(["export", "-w", d / "model.pt", "--to", "onnx", "-o", shipped_dir("latency_tables")],
                       "shipped", d)
    refused_and_intact(["export", "-w", d / "model.pt", "--to", "onnx", "-o", shipped_dir("latency_tables") / "ex"],
                       "shipped", d)
    refused_and_intact(["export", "-w", d / "model.pt", "--to", "onnx", "-o", d], "holds", d)  # holds its input
    left = [p.name for p in d.iterdir() if p.name.startswith(".")]
    assert not [n for n in left if not n.endswith(".lock")], left


def test_export_replaces_an_earlier_export_of_ours(d, tmp_path):
    out = tmp_path / "ex"
    for _ in range(2):
        r = runner.invoke(app, ["export", "-w", str(d / "model.pt"), "--to", "onnx", "-o", str(out), "-f", "json"])
        assert r.exit_code == 0, r.output
    assert (out / "model.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


# ---------------------------------------------------------------- overwrites
def test_run_bundle_never_unpacks_over_a_users_folder(d):
    shutil.copyfile(d / "b.zip", d / "mine.zip")
    _user_folder(d / "mine")
    refused_and_intact(["profile", "run-bundle", d / "mine.zip", "-o", d / "t_mine.json"], "not a profiling bundle",
                       d / "mine")
    assert not (d / "t_mine.json").exists()


def test_no_output_may_be_a_shipped_table_or_an_input(d):
    shipped_table = shipped_dir("latency_tables") / ORT_TABLE
    r, t = d / "ratings.json", d / "table.json"
    cases = [
        (["profile", "validate", "-t", t, "-s", "tiny", "-n", "6", "-o", shipped_table], "shipped"),
        (["profile", "run-bundle", d / "b.zip", "-o", shipped_table], "shipped"),
        (["search", "-r", r, "-s", "tiny", "-o", shipped_table], "shipped"),
        (["search", "-r", r, "-s", "tiny", "-o", r], "input"),
        (["search", "-r", r, "-s", "tiny", "-t", t, "-o", t], "input"),
        (["search", "-r", r, "-s", "tiny", "-t", t, "--pareto", d / "work" / "notes"], "not a Pareto front"),
        (["search", "-r", r, "-s", "tiny", "-o", d / "precious.json"], "not a search result"),
        (["search", "-r", r, "-s", "tiny", "-o", d / "work"], "is a folder"),
        (["profile", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "-o", d / "precious.json"], "not a latency table"),
        (["profile", "bundle", "-d", "x86-cpu-torch", "-s", "tiny", "-o", d / "precious.zip"], "not a profiling bundle"),
        (["teacher", "train", "-s", "tiny", "-o", d / "precious.json"], "not a dna-deploy checkpoint"),
        (["train", "-s", "tiny", "--teacher", d / "model.pt", "-o", d / "work"], "not a `train` folder"),
        (["retrain", "-s", "tiny", "-a", TINY_ARCH, "-o", d / "work"], "not a `retrain` folder"),
        (["rate", "-s", "tiny", "--supernet", d / "supernet_empty", "--teacher", d / "model.pt", "-o",
          d / "precious.json"], "not a rating table"),
    ]
    (d / "work" / "notes.csv").write_text(PRECIOUS)
    for args, fragment in cases:
        refused_and_intact(args, fragment, d)


def test_validate_never_writes_into_a_users_work_folder(d):
    _user_folder(d / "cal.validate")
    refused_and_intact(["profile", "validate", "-t", d / "table.json", "-s", "tiny", "-n", "6", "-o", d / "cal.json"],
                       "validation work folder", d)
    assert not (d / "cal.json").exists()


def test_verify_never_overwrites_a_users_verify_json(d, tmp_path):
    shutil.copytree(d / "ex", tmp_path / "ex")
    (tmp_path / "ex" / "verify.json").write_text(PRECIOUS)
    refused_and_intact(["verify", tmp_path / "ex", "--max-images", "8"], "verify report", tmp_path)


@pytest.mark.parametrize("inside", ["latency_tables", "devices", "examples"])
def test_pipeline_output_inside_a_shipped_folder_is_refused(d, tmp_path, inside):
    cfg = {"space": "tiny", "output": str(shipped_dir(inside) / "mine"),
           "devices": [{"device": "x86-cpu-onnxruntime", "budget_ms": 0.2}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    refused_and_intact(["run", tmp_path / "p.yaml"], "shipped", tmp_path)
    assert not (shipped_dir(inside) / "mine").exists()


def test_pipeline_output_is_never_a_users_folder_or_its_own_data(d, tmp_path):
    data = tmp_path / "images"
    for split in ("train", "val"):
        _user_folder(data / split)
    cfg = {"space": "tiny", "data": str(data), "output": str(data),
           "devices": [{"device": "x86-cpu-onnxruntime", "budget_ms": 0.2}]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    refused_and_intact(["run", tmp_path / "p.yaml"], "input", tmp_path)
    refused_and_intact(["run", tmp_path / "p.yaml", "--out", d / "work"], "not a `run` folder", tmp_path, d / "work")


def test_names_from_files_are_checked_before_they_name_files(d, tmp_path):
    for name in ("../../x", "/etc/x", "..", "a/b", ""):
        (tmp_path / "dev.yaml").write_text(yaml.safe_dump({"name": name, "runtime": "onnxruntime"}))
        refused_and_intact(["profile", "-d", tmp_path / "dev.yaml", "-s", "tiny"], "cannot name a file", tmp_path)
    assert not (tmp_path.parent / "x").exists()


# ---------------------------------------------------------------- hostile files
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
               for p, c in zip([None, *"abcdefgh"], "abcdefghi"))


def test_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    assert len(BOMB) < 1200  # the "billion laughs": 9^9 strings once expanded
    (tmp_path / "bomb.yaml").write_text(BOMB)
    for args in (["run", tmp_path / "bomb.yaml"], ["space", "show", "--space", tmp_path / "bomb.yaml"],
                 ["profile", "-d", tmp_path / "bomb.yaml", "-s", "tiny"]):
        line = refused_and_intact(args, "alias", tmp_path)
        assert "lol" not in line
    (tmp_path / "broken_bomb.yaml").write_text(BOMB + "j: [*i, *i\n")  # a parse error after the bomb
    line = refused_and_intact(["run", tmp_path / "broken_bomb.yaml"], "bomb.yaml", tmp_path)
    assert "lol" not in line


def test_deep_or_huge_files_are_refused_before_they_are_read(d, tmp_path):
    """Nesting a parser takes minutes or its recursion limit over, and sizes no file of ours has
    (sparse files: nothing is written to disk), are one line each."""
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (tmp_path / "deep.yaml").write_text("[" * 200_000 + "]" * 200_000)
    (tmp_path / "nested.yaml").write_text("- " * 3000 + "x\n")
    for path in ("deep.json", "deep.yaml", "nested.yaml"):
        refused_and_intact(["run", tmp_path / path], path, tmp_path)
        refused_and_intact(["space", "show", "--space", tmp_path / path], path, tmp_path)
    refused_and_intact(["search", "-r", tmp_path / "deep.json", "-s", "tiny"], "nested too deeply", tmp_path)
    refused_and_intact(["profile", "predict", "-t", tmp_path / "deep.json", TINY_ARCH], "nested too deeply", tmp_path)
    huge = tmp_path / "huge"  # not hashed: that would read them
    huge.mkdir()
    for name, size in (("huge.json", 2**30 + 1), ("huge.yaml", 2**25)):
        with open(huge / name, "wb") as f:
            f.truncate(size)
    one_error(["search", "-r", huge / "huge.json", "-s", "tiny"], "bytes")
    one_error(["run", huge / "huge.yaml"], "bytes")
    assert sorted(p.name for p in huge.iterdir()) == ["huge.json", "huge.yaml"]


def test_hostile_bundles_are_one_clean_line_and_leave_nothing(d, tmp_path):
    m = json.loads((d / "manifest.json").read_text())
    forged = {
        "empty_manifest": ({"manifest.json": b"{}"}, "not a dna-deploy profiling bundle"),
        "list_manifest": ({"manifest.json": b"[1, 2]"}, "not a dna-deploy profiling bundle"),
        "no_manifest": ({"other.txt": b"x"}, "manifest.json"),
        "huge_shape": ({"manifest.json": json.dumps(_forged_manifest(
            d, lambda m: _first_entry(m).update(input_shape=[1, 3, 163840, 163840]))).encode()}, "input_shape"),
        "string_shape": ({"manifest.json": json.dumps(_forged_manifest(
            d, lambda m: _first_entry(m).update(input_shape="1x3x32x32"))).encode()}, "input_shape"),
        "escaping_file": ({"manifest.json": json.dumps(_forged_manifest(
            d, lambda m: _first_entry(m).update(file="../../escape.onnx"))).encode()}, "cannot name a file"),
        "bad_device": ({"manifest.json": json.dumps({**m, "device": {"name": "../x", "runtime": "torch"}}).encode()},
                       "cannot name a file"),
        "bomb": ({"manifest.json": json.dumps(_forged_manifest(
            d, lambda m: _first_entry(m).update(file="big.onnx"))).encode(), "big.onnx": bytes(64 * 2**20)},
                 "refused before unpacking"),
    }
    for name, (members, fragment) in forged.items():
        _zip(tmp_path / f"{name}.zip", members)
        refused_and_intact(["profile", "run-bundle", tmp_path / f"{name}.zip", "-o", tmp_path / f"{name}.json"],
                           fragment, tmp_path)
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.json").exists()
    assert (tmp_path / "bomb.zip").stat().st_size < 2**20  # 64 MiB in under 1 MiB: never unpacked
    (tmp_path / "random.zip").write_bytes(os.urandom(4096))
    refused_and_intact(["profile", "run-bundle", tmp_path / "random.zip"], "not a readable zip", tmp_path)
    (tmp_path / "folder_bundle").mkdir()
    (tmp_path / "folder_bundle" / "manifest.json").write_text("{}")
    refused_and_intact(["profile", "run-bundle", tmp_path / "folder_bundle", "-o", tmp_path / "f.json"],
                       "not a dna-deploy profiling bundle", tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]


# ---------------------------------------------------------------- forged numbers
def test_forged_numbers_are_refused_where_they_enter(d, tmp_path):
    from dna_deploy.select.search import synthetic_ratings
    from dna_deploy.space import load_space

    ratings = synthetic_ratings(load_space("tiny"), seed=0)
    forged = {}
    for name, key, value in (("neg_macs", "macs", -1e9), ("str_params", "params", "12"),
                             ("inf_macs", "macs", float("inf"))):
        r = json.loads(json.dumps(ratings))
        next(iter(r["blocks"][1]["candidates"].values()))[key] = value
        forged[name] = tmp_path / f"{name}.json"
        forged[name].write_text(json.dumps(r))
    for name, fragment in (("neg_macs", "space gives"), ("inf_macs", "space gives"), ("str_params", "params")):
        one_error(["search", "-r", forged[name], "-s", "tiny", "--max-mmacs", "1"], fragment)
    one_error(["search", "-r", d / "ratings.json", "-s", "tiny", "--top-k", "1000000000"], "top_k")

    entry = lambda v: lambda t: next(iter(t["entries"].values())).update(p10_ms=v, median_ms=v)
    quantile = lambda k, v: lambda t: t["fidelity"]["calibrated"]["rel_error_quantiles"].update({k: v})
    tables = {
        "entry Infinity": (entry(float("inf")), "finite"),
        "entry NaN": (entry(float("nan")), "finite"),
        "entry negative": (entry(-1.0), "finite"),
        "entry true": (entry(True), "finite"),
        "offset": (lambda t: t["calibration"].update(b=-100.0), "not a latency"),
        "slope": (lambda t: t["calibration"].update(a=-1.0), "slope"),
        "q05 -1": (quantile("q05", -1), "q05"),
        "q95 string": (quantile("q95", "0.1"), "q95"),
        "q order": (quantile("q05", 0.5), "q05"),
        "coverage": (quantile("coverage", 7), "coverage"),
        "fidelity string": (lambda t: t.update(fidelity="good"), "fidelity"),
    }
    for i, (what, (change, fragment)) in enumerate(tables.items()):
        path = _forged_table(d, f"forged_{i}.json", change)
        one_error(["profile", "predict", "-t", path, TINY_ARCH], fragment)
        one_error(["search", "-r", d / "ratings.json", "-s", "tiny", "-t", path, "-b", "1", "--budget-margin"],
                  fragment)


def test_forged_space_files_are_one_clean_line(tmp_path):
    from dataclasses import asdict

    from dna_deploy.space import load_space

    base = asdict(load_space("tiny"))
    base["blocks"] = [dict(b, choices=list(b["choices"])) for b in base["blocks"]]
    cases = {
        "se_ratio string": ({"se_ratio": "0.25"}, "se_ratio"),
        "first_op int": ({"first_op": 3}, "first_op"),
        "activation list": ({"activation": ["swish"]}, "activation"),
        "input_size huge": ({"input_size": 10**9}, "input_size"),
        "head huge": ({"head_channels": 2**40}, "head_channels"),
        "choices int": ({"blocks": [dict(base["blocks"][0], choices=5)]}, "choices"),
        "layers deep": ({"blocks": [dict(base["blocks"][0], layers=40)]}, "candidates"),
        "allow_skip string": ({"blocks": [dict(base["blocks"][0], allow_skip="yes")]}, "allow_skip"),
        "se_ratio nan": ({"se_ratio": float("nan")}, "se_ratio"),
    }
    for i, (what, (change, fragment)) in enumerate(cases.items()):
        path = tmp_path / f"space{i}.json"
        path.write_text(json.dumps({**base, **change}))
        one_error(["space", "show", "--space", path], fragment)
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    one_error(["space", "show", "--space", tmp_path / "latin1.yaml"], "UTF-8")


# ---------------------------------------------------------------- trust
def test_verify_checks_the_weights_against_the_arch_model_json_claims(d, tmp_path):
    shutil.copytree(d / "ex", tmp_path / "ex")
    side = json.loads((tmp_path / "ex" / "model.json").read_text())
    claimed = "k3e6.k3e6|k3e6.k3e6.k3e6|k3e6.k3e6.k3e6|k3e6.k3e6"
    (tmp_path / "ex" / "model.json").write_text(json.dumps({**side, "arch": claimed}))
    line = refused_and_intact(["verify", tmp_path / "ex", "--max-images", "8"], "names architecture", tmp_path)
    assert claimed in line and side["arch"] in line
    (tmp_path / "ex" / "model.json").write_text(json.dumps(
        {**side, "artifacts": [{**side["artifacts"][0], "path": "../../elsewhere.onnx"}]}))
    refused_and_intact(["verify", tmp_path / "ex"], "cannot name a file", tmp_path)
    (tmp_path / "ex" / "model.json").write_text("[1, 2, 3]")
    refused_and_intact(["verify", tmp_path / "ex"], "not a dna-deploy export", tmp_path)


# ---------------------------------------------------------------- data
def test_a_bad_image_is_named_in_one_line_from_any_worker(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 40), (i * 60, 20, 20)).save(root / split / c / f"{i}.jpg")
    good = (root / "train" / "cat" / "0.jpg").read_bytes()
    bad = root / "train" / "cat" / "0.jpg"
    bad.write_bytes(good[: len(good) // 2])  # a truncated JPEG
    for workers in ("0", "2"):
        line = one_error(["teacher", "train", "-s", "tiny", "--data", root, "-o", tmp_path / "t.pt", "--epochs", "1",
                          "--workers", workers, "--device", "cpu"], str(bad))
        assert "cannot be read" in line
    bad.write_bytes(good)
    link = root / "train" / "dog" / "0.jpg"
    link.unlink()
    link.symlink_to(tmp_path / "gone.jpg")
    line = one_error(["teacher", "train", "-s", "tiny", "--data", root, "-o", tmp_path / "t.pt", "--epochs", "1",
                      "--workers", "2", "--device", "cpu"], str(link))
    assert "broken symbolic link" in line
    assert not (tmp_path / "t.pt").exists()


# ---------------------------------------------------------------- every output goes through the rule
def _commands():
    def walk(c, path):
        if hasattr(c, "commands"):
            if c.callback is not None and path:
                yield " ".join(path), c
            for name, sub in c.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), c

    return dict(walk(get_command(app), []))


# Path options and arguments each command reads (never written).
INPUTS = {("train", "teacher_weights"), ("rate", "supernet"), ("rate", "teacher_weights"), ("search", "ratings"),
          ("search", "table"), ("retrain", "teacher_weights"), ("retrain", "init_supernet"), ("export", "weights"),
          ("export", "table"), ("verify", "folders"), ("verify", "table"), ("run", "config"),
          ("profile predict", "table"), ("profile validate", "table"), ("profile run-bundle", "bundle_path"),
          ("profile", "benchmark_binary")}


def _output_cases(d: Path) -> dict:
    """(command, parameter) -> argv writing that output to TARGET, with everything else valid."""
    m, r, t = d / "model.pt", d / "ratings.json", d / "table.json"
    return {
        ("train", "output"): ["train", "-s", "tiny", "--teacher", m, "-o", "TARGET_DIR"],
        ("rate", "output"): ["rate", "-s", "tiny", "--supernet", d / "supernet_empty", "--teacher", m, "-o", "TARGET"],
        ("search", "output"): ["search", "-r", r, "-s", "tiny", "-o", "TARGET"],
        ("search", "pareto_out"): ["search", "-r", r, "-s", "tiny", "-t", t, "--pareto", "TARGET_STEM"],
        ("retrain", "output"): ["retrain", "-s", "tiny", "-a", TINY_ARCH, "-o", "TARGET_DIR"],
        ("export", "output"): ["export", "-w", m, "--to", "onnx", "-o", "TARGET_DIR"],
        ("run", "out"): ["run", shipped_dir("examples") / "quickstart.yaml", "--out", "TARGET_DIR"],
        ("quickstart", "out"): ["quickstart", "--out", "TARGET_DIR"],
        ("profile", "output"): ["profile", "-d", "x86-cpu-onnxruntime", "-s", "tiny", "-o", "TARGET"],
        ("profile validate", "output"): ["profile", "validate", "-t", t, "-s", "tiny", "-n", "6", "-o", "TARGET"],
        ("profile validate", "plot"): ["profile", "validate", "-t", t, "-s", "tiny", "-n", "6", "-o",
                                       d / "new_cal.json", "--plot", "TARGET"],
        ("profile bundle", "output"): ["profile", "bundle", "-d", "x86-cpu-torch", "-s", "tiny", "-o", "TARGET"],
        ("profile run-bundle", "output"): ["profile", "run-bundle", d / "b.zip", "-o", "TARGET"],
        ("teacher train", "output"): ["teacher", "train", "-s", "tiny", "-o", "TARGET"],
    }


def test_every_output_option_goes_through_the_rule(d, tmp_path):
    """Each command's Path parameters are inputs (listed) or outputs; each output, pointed at a
    user's file or folder and at a shipped one, is refused and changes nothing."""
    cases = _output_cases(d)
    seen = set()
    for name, cmd in _commands().items():
        for pname, p in inspect.signature(cmd.callback).parameters.items():
            if "Path" in str(p.annotation):
                key = (name, pname)
                seen.add(key)
                assert key in INPUTS or key in cases, f"`{name}` {pname}: an input, or an output the rule must check?"
    assert seen >= set(cases), sorted(set(cases) - seen)
    user = _user_folder(tmp_path / "user")
    (tmp_path / "user.csv").write_text(PRECIOUS)
    (tmp_path / "user.png").write_text(PRECIOUS)
    shipped_file, shipped_folder = shipped_dir("latency_tables") / ORT_TABLE, shipped_dir("devices")
    for key, argv in sorted(cases.items(), key=str):
        folder = "TARGET_DIR" in argv
        stem = "TARGET_STEM" in argv
        for target, fragment in ((user if folder else tmp_path / ("user" if stem else "user.csv"), "refusing"),
                                 (shipped_folder if folder else shipped_file.with_suffix("") if stem else shipped_file,
                                  "shipped")):
            args = [target if a in ("TARGET", "TARGET_DIR", "TARGET_STEM") else a for a in argv]
            refused_and_intact(args, fragment, tmp_path)


def test_output_rule_in_one_place():
    """The commands share one rule: cli/common.check_output is outputs.check_output's wrapper, and
    no command keeps a check of its own."""
    root = Path(__file__).resolve().parents[2]
    for f in (root / "cli").glob("*.py"):
        assert "check_writable" not in f.read_text(), f"{f.name} keeps its own output check"
    from dna_deploy import outputs

    assert "def check_output" in inspect.getsource(outputs)


# ---------------------------------------------------------------- locks, leftovers, failed writes
def test_a_second_writer_of_one_output_is_refused(d, tmp_path):
    """While one process holds an output's lock, every command that writes it is refused (two
    `train` runs on one folder duplicated metrics.jsonl records)."""
    from dna_deploy.io import exclusive_lock

    m = d / "model.pt"
    cases = [
        (tmp_path / "sn", ["train", "-s", "tiny", "--teacher", m, "-o", tmp_path / "sn", "--epochs", "1"]),
        (tmp_path / "re", ["retrain", "-s", "tiny", "-a", TINY_ARCH, "-o", tmp_path / "re", "--epochs", "1"]),
        (tmp_path / "t.pt", ["teacher", "train", "-s", "tiny", "-o", tmp_path / "t.pt", "--epochs", "1"]),
        (tmp_path / "r.json", ["rate", "-s", "tiny", "--supernet", d / "supernet_empty", "--teacher", m, "-o",
                               tmp_path / "r.json"]),
        (tmp_path / "b.zip", ["profile", "bundle", "-d", "x86-cpu-torch", "-s", "tiny", "-o", tmp_path / "b.zip"]),
        (tmp_path / "cal.validate", ["profile", "validate", "-t", d / "table.json", "-s", "tiny", "-n", "6", "-o",
                                     tmp_path / "cal.json"]),
    ]
    for target, args in cases:
        with exclusive_lock(target, what="test"):
            one_error(args, "another")
        assert not target.exists() or not any(target.iterdir()), f"{args}: wrote {target}"


def test_an_export_cleans_up_what_a_killed_one_left(d, tmp_path):
    from dna_deploy.deploy.export import LEFTOVER_MARK

    left = tmp_path / ".ex.tmp-killed"
    left.mkdir()
    (left / LEFTOVER_MARK).touch()
    (left / "model.onnx").write_bytes(b"half")
    mine = tmp_path / ".ex.tmp-mine"  # a user's folder of that shape, not marked: not ours to remove
    _user_folder(mine)
    r = runner.invoke(app, ["export", "-w", str(d / "model.pt"), "--to", "onnx", "-o", str(tmp_path / "ex"), "-f", "json"])
    assert r.exit_code == 0, r.output
    assert not left.exists() and (mine / "notes.txt").read_text() == PRECIOUS


def test_a_failed_write_names_the_file_and_keeps_the_old_one(d, tmp_path):
    """A full disk, stood in for by a file-size limit (the write fails the same way, with an OSError
    that carries no file name): one line naming the file, the old file intact, no temporary left."""
    import resource
    import subprocess
    import sys

    out = tmp_path / "s.json"
    r = runner.invoke(app, ["search", "-r", str(d / "ratings.json"), "-s", "tiny", "-o", str(out), "-f", "json"])
    assert r.exit_code == 0, r.output
    before = out.read_bytes()
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))  # Python ignores SIGXFSZ
    p = subprocess.run([sys.executable, "-m", "dna_deploy", "search", "-r", str(d / "ratings.json"), "-s", "tiny",
                        "--top-k", "50", "-o", str(out)], capture_output=True, text=True, preexec_fn=limit, timeout=300,
                       check=False)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert p.returncode == 1 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert str(out.name) in errors[0], errors[0]
    assert out.read_bytes() == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.json"]


def test_forged_checkpoints_are_one_clean_line(d, tmp_path):
    import torch

    ckpt = torch.load(d / "model.pt", weights_only=True)
    forged = {
        "no_space": ({k: v for k, v in ckpt.items() if k != "space"}, "'space'"),
        "arch_int": ({**ckpt, "arch": 5}, "'arch'"),
        "weights_list": ({**ckpt, "state_dict": [1, 2]}, "'state_dict'"),
        "input_string": ({**ckpt, "input": "x"}, "'input'"),
        "classes_string": ({**ckpt, "num_classes": "ten"}, "'num_classes'"),
        "huge_space": ({**ckpt, "space": {**ckpt["space"], "input_size": 10**9}}, "input_size"),
    }
    for name, (payload, fragment) in forged.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        refused_and_intact(["export", "-w", tmp_path / f"{name}.pt", "--to", "onnx", "-o", tmp_path / f"ex_{name}"],
                           fragment, tmp_path)
        if name in ("arch_int", "weights_list", "no_space"):
            refused_and_intact(["train", "-s", "tiny", "--teacher", tmp_path / f"{name}.pt", "-o", tmp_path / "sn",
                                "--epochs", "1"], fragment, tmp_path)
