import json

from typer.testing import CliRunner

from dna_deploy.cli.app import app

runner = CliRunner()


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.startswith("dna-deploy ")


def test_space_show_prints_exact_count():
    r = runner.invoke(app, ["space", "show", "--space", "dna-mbconv", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["architectures (distinct networks)"] == 1_469_618_460_338_112
    r = runner.invoke(app, ["space", "show", "--space", "dna-mbconv"])
    assert "1,469,618,460,338,112" in r.output


def test_space_sample_is_valid_and_seeded(tiny):
    r1 = runner.invoke(app, ["space", "sample", "-s", "tiny", "-n", "4", "--seed", "7"])
    r2 = runner.invoke(app, ["space", "sample", "-s", "tiny", "-n", "4", "--seed", "7"])
    assert r1.exit_code == 0 and r1.output == r2.output
    lines = r1.output.split()
    assert len(lines) == 4
    for line in lines:
        tiny.parse_arch(line)


def test_space_describe_totals(tiny):
    arch = str(tiny.smallest_arch())
    r = runner.invoke(app, ["space", "describe", arch, "-s", "tiny", "-f", "json"])
    assert r.exit_code == 0
    d = json.loads(r.output)
    from dna_deploy.nn.builder import network_costs

    assert d["macs"] == network_costs(tiny, tiny.smallest_arch())["macs"]


def test_bad_arch_is_one_line_and_exit_1():
    r = runner.invoke(app, ["space", "describe", "k3e3|k9e9", "-s", "tiny"])
    assert r.exit_code == 1
    assert r.output.strip().count("\n") == 0 and r.output.startswith("error: ")
    assert "Traceback" not in r.output


def test_unknown_space_is_one_line(tmp_path):
    r = runner.invoke(app, ["space", "show", "-s", "nope"])
    assert r.exit_code == 1 and "unknown space 'nope'" in r.output


def test_cli_import_stays_light():
    """`dna-deploy --help` must not pay for torch, onnxruntime, TensorFlow or TensorRT."""
    import subprocess
    import sys

    code = ("import sys, dna_deploy.cli.app; "
            "print(','.join(m for m in ('torch', 'onnxruntime', 'tensorflow', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
