"""The layout holds: no import cycles, dependencies point one way, and the wheel holds code and
shipped data only and runs."""

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lower layers never import higher ones. A newcomer follows an architecture string from `space`
# to `deploy` through these folder names; `pipeline` chains them and `cli` only wires.
LAYERS = [
    {"errors", "io", "outputs", "progress", "display", "host", "distributed", "settings", "compute"},
    {"space"},
    {"nn", "data"},
    {"convert"},
    {"runtimes"},
    {"targets"},
    {"latency"},
    {"distill"},
    {"select"},
    {"deploy"},
    {"pipeline"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    mods = {}
    for base, prefix in ((ROOT / "dna_deploy", "dna_deploy"), (ROOT / "cli", "dna_deploy.cli")):
        for f in base.rglob("*.py"):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = f
    return mods


def _imports(f: Path, known: set[str]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(f.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            if n.startswith("dna_deploy"):
                out.add(n)
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles():
    mods = _modules()
    packages = {m for m, f in mods.items() if f.name == "__init__.py"}
    graph = {m: {d for d in _imports(f, set(mods)) if d != m and d not in packages} for m, f in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_one_way():
    mods = _modules()
    wrong = []
    for m, f in mods.items():
        here = _top(m)
        if here in ("__init__", "__main__"):
            continue
        assert here in LAYER_OF, f"{m}: add its package to LAYERS in this test (and to the layout in docs/contributing.md)"
        for d in _imports(f, set(mods)):
            there = _top(d)
            if there in LAYER_OF and LAYER_OF[there] > LAYER_OF[here]:
                wrong.append(f"{m} imports {d} ({there} is above {here})")
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Built from the tracked files only (as from a clean clone), so no scratch file or stale build/ gets in."""
    import shutil

    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                        str(src)], capture_output=True, text=True, cwd=out)
    assert r.returncode == 0, r.stderr[-3000:]
    return next(out.glob("dna_deploy-*.whl"))


def test_wheel_holds_code_and_shipped_data_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.stat().st_size < 2_000_000, f"wheel is {wheel.stat().st_size} bytes"
    allowed_data = (".yaml", ".json", ".png")
    for n in names:
        if ".dist-info/" in n:
            continue
        assert n.startswith("dna_deploy/"), n
        if n.startswith("dna_deploy/_shipped/"):
            assert n.endswith(allowed_data) and n.count("/") == 3, f"unexpected shipped file {n}"
        else:
            assert n.endswith(".py"), f"unexpected file {n}"
    assert "dna_deploy/cli/app.py" in names and "dna_deploy/pipeline/runner.py" in names
    shipped = {n.split("/")[2] for n in names if n.startswith("dna_deploy/_shipped/")}
    assert shipped == {"devices", "latency_tables", "examples"}
    tracked = subprocess.run(["git", "ls-files", "devices", "latency_tables", "examples"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert {f"dna_deploy/_shipped/{t}" for t in tracked} == {n for n in names if n.startswith("dna_deploy/_shipped/")}
    entry = [n for n in names if n.endswith("entry_points.txt")][0]
    assert "dna-deploy = dna_deploy.cli.app:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_wheel_runs_like_the_editable_install(wheel, tmp_path):
    """Unpacked alone on the path (no checkout in sight), the wheel's CLI finds its shipped files."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import dna_deploy, dna_deploy.cli.app as a, sys; assert dna_deploy.__file__.startswith(sys.argv[1]), "
            "dna_deploy.__file__; sys.argv = ['dna-deploy', 'devices', 'list', '-f', 'json']; a.main()")
    r = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "x86-cpu-onnxruntime" in r.stdout
    r = subprocess.run([sys.executable, "-m", "dna_deploy", "run", "--help"], capture_output=True, text=True,
                       cwd=tmp_path, env=env)
    assert r.returncode == 0 and "Example" in r.stdout
    for cmd in (["dna-deploy", "space", "show", "--space", "tiny", "-f", "json"],):
        editable = subprocess.run([str(Path(sys.executable).with_name("dna-deploy")), *cmd[1:]], capture_output=True,
                                  text=True, cwd=tmp_path)
        from_wheel = subprocess.run([sys.executable, "-m", "dna_deploy", *cmd[1:]], capture_output=True, text=True,
                                    cwd=tmp_path, env=env)
        assert editable.returncode == 0 and editable.stdout == from_wheel.stdout
