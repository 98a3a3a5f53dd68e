"""An Android phone over adb, timed with LiteRT's own `benchmark_model` (as nn-Meter does): the
user gives the binary built for the phone (--benchmark-binary); it and the .tflite models are
pushed to /data/local/tmp/dna-deploy/, and each model is run with the device spec's threads, CPU
affinity (`taskset` with the spec's cpu_mask) and delegate (XNNPACK, the builtin kernels, GPU or
NNAPI), in rounds interleaved over the models as profiling does here.

What comes back per round is benchmark_model's statistics line for its timed runs
(`count= first= curr= min= max= avg= std=`, with `p5= median= p95=` in newer builds, all in
microseconds; tensorflow/core/util/stats_calculator.h, Stat::OutputToStream). A round's figure is
the median of its timed runs where the tool prints it, else their mean; a table entry is then the
table's statistic (p10_ms) over its rounds' figures, the quiet rounds kept (runtimes/base). The
phone has no speed probe: a round is confirmed by another within the quiet tolerance alone.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from dna_deploy.errors import DataError, RuntimeUnavailable
from dna_deploy.io import fingerprint, sha256_file
from dna_deploy.targets.base import Target, TargetError, append_result, read_partial, start_partial

REMOTE_DIR = "/data/local/tmp/dna-deploy"
BUILD_HINT = ("LiteRT's benchmark_model for the phone's ABI: the android_aarch64 build from LiteRT's nightly binaries, "
              "or bazel build -c opt --config=android_arm64 //tensorflow/lite/tools/benchmark:benchmark_model")
# ELF e_machine -> the names `uname -m` gives for it
ELF_MACHINES = {183: ("aarch64", "arm64"), 40: ("armv7l", "armv8l", "arm"), 62: ("x86_64",), 3: ("i686", "i386", "x86")}
ELF_NAMES = {183: "arm64 (aarch64)", 40: "32-bit arm", 62: "x86-64", 3: "32-bit x86"}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RUN_HEADER = "Running benchmark for at least"


def parse_benchmark_output(text: str) -> dict:
    """The statistics of benchmark_model's timed runs, in milliseconds: count, first_ms, curr_ms,
    min_ms, max_ms, avg_ms, std_ms, and p5_ms, median_ms, p95_ms where printed; init_ms where the
    'Inference timings' summary gives it. benchmark_model prints a header and a `count=` line for
    its warm-up, then for its timed runs: the timed runs are the last `count=` line after the last
    header. Lines may carry a log prefix (`INFO: `, logcat's `I tflite  : `). All runs equal print
    `count=N curr=X` (no min/max/avg): those are filled from curr."""
    if _RUN_HEADER not in text:
        raise TargetError("benchmark_model printed no timed runs: " + _last_error(text))
    if text.count(_RUN_HEADER) < 2:  # the warm-up's header only: stopped before its timed runs
        raise TargetError("benchmark_model printed no statistics for its timed runs (it stopped after its warm-up): "
                          + _last_error(text))
    block = text.rsplit(_RUN_HEADER, 1)[1]
    line = next((ln for ln in block.splitlines() if re.search(r"\bcount=\d+", ln)), None)
    if line is None:
        raise TargetError("benchmark_model printed no statistics for its timed runs: " + _last_error(text))
    fields = {k: float(v) for k, v in re.findall(rf"\b(count|first|curr|min|max|avg|std|p5|median|p95)=({_NUMBER})", line)}
    if "curr" not in fields or "count" not in fields:
        raise TargetError(f"benchmark_model's statistics line is not one this parser knows: {line.strip()[:160]}")
    for k in ("first", "min", "max", "avg"):
        fields.setdefault(k, fields["curr"])
    fields.setdefault("std", 0.0)
    out = {"count": int(fields.pop("count"))}
    out.update({f"{k}_ms": v / 1000 for k, v in fields.items()})
    m = re.search(rf"Init:\s*({_NUMBER})", text)
    if m:
        out["init_ms"] = float(m.group(1)) / 1000
    return out


def round_figure_ms(stats: dict) -> float:
    """A round's figure: the median of its timed runs where printed, else their mean."""
    return stats.get("median_ms", stats["avg_ms"])


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "rror" in ln or "ailed" in ln]
    return (errors[:1] or lines[-1:] or ["no output"])[0][:200]  # the first error is the cause


def benchmark_command(binary: str, model: str, *, threads: int, cpu_mask: str | None = None, delegate: str = "xnnpack",
                      runs: int = 50, warmup_runs: int = 3, warmup_s: float = 0.25) -> str:
    """The shell command run on the phone for one round of one model. delegate: xnnpack (LiteRT's
    default CPU kernels), builtin or reference (without XNNPACK), gpu, nnapi."""
    flags = {"xnnpack": ["--use_xnnpack=true"], "builtin": ["--use_xnnpack=false"],
             "reference": ["--use_xnnpack=false"], "gpu": ["--use_gpu=true"], "nnapi": ["--use_nnapi=true"]}
    if delegate not in flags:
        raise DataError(f"delegate {delegate!r} for benchmark_model: choose {', '.join(flags)}")
    if cpu_mask is not None and not re.fullmatch(r"(0x)?[0-9a-fA-F]{1,16}", cpu_mask):
        raise DataError(f"cpu_mask {cpu_mask!r} is not a hexadecimal CPU mask for taskset (e.g. f0 for CPUs 4-7)")
    argv = [binary, f"--graph={model}", f"--num_threads={threads}", f"--num_runs={runs}", "--min_secs=0",
            f"--warmup_runs={warmup_runs}", f"--warmup_min_secs={warmup_s:g}", *flags[delegate]]
    if delegate == "reference":
        argv.append("--use_ruy=false")
    cmd = " ".join(shlex.quote(a) for a in argv)
    return f"taskset {cpu_mask.removeprefix('0x')} {cmd}" if cpu_mask else cmd


def elf_machine(path: Path) -> int | None:
    """e_machine of an ELF file (None: not ELF)."""
    head = Path(path).read_bytes()[:20]
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    return int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")


def delegate_for(device: str, op_resolver: str | None) -> str:
    if device in ("gpu", "nnapi"):
        return device
    return op_resolver or "xnnpack"


class AdbTarget(Target):
    runtimes = ("litert",)  # benchmark_model runs .tflite models
    def __init__(self, serial: str, *, benchmark_binary: Path | None = None, cpu_mask: str | None = None):
        self.serial, self.benchmark_binary, self.cpu_mask = serial, benchmark_binary, cpu_mask
        self.url = f"adb://{serial}"
        self._identity: dict | None = None
        self.attempts = 0
        self.device = "cpu"

    def configure(self, device) -> None:
        self.cpu_mask = getattr(device, "cpu_mask", None) or self.cpu_mask
        self.device = device.device

    def _adb(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        if shutil.which("adb") is None:
            raise TargetError("adb is not installed here: apt-get install adb (or Android's platform-tools), then connect "
                              "the phone with USB debugging on")
        r = subprocess.run(["adb", "-s", self.serial, *args], capture_output=True, text=True, timeout=timeout)
        err = (r.stderr + r.stdout).strip()
        if "unauthorized" in err:
            raise TargetError(f"phone {self.serial} has not authorised this computer: unlock it and accept the "
                              "'Allow USB debugging' prompt, then retry")
        if "not found" in err and ("device" in err or "serial" in err) and r.returncode != 0:
            raise TargetError(f"no phone {self.serial}: connect it with USB debugging on (`adb devices` lists the serials)")
        if "offline" in err:
            raise TargetError(f"phone {self.serial} is offline: reconnect the cable, or `adb kill-server` and retry")
        if "No space left on device" in err:
            raise TargetError(f"phone {self.serial}: its disk is full in {REMOTE_DIR}; free space there")
        return r

    def shell(self, command: str, *, timeout: float = 600) -> str:
        r = self._adb("shell", command, timeout=timeout)
        return r.stdout

    def identity(self) -> dict:
        if self._identity is None:
            props = {k: self.shell(f"getprop {k}").strip() for k in
                     ("ro.product.model", "ro.build.version.release", "ro.build.version.sdk", "ro.product.cpu.abi",
                      "ro.soc.model", "ro.board.platform")}
            cpuinfo = self.shell("cat /proc/cpuinfo")
            hardware = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                             if ln.split(":")[0].strip() in ("Hardware", "model name")), "")
            flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines()
                          if ln.split(":")[0].strip() in ("Features", "flags")), [])
            cores = self.shell("nproc").strip()
            self._identity = {
                "cpu": props["ro.soc.model"] or hardware or props["ro.board.platform"] or props["ro.product.model"],
                "cpu_flags_sha256": hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16],
                "cores": int(cores) if cores.isdigit() else None, "machine": self.shell("uname -m").strip(),
                "os": f"Android {props['ro.build.version.release']} (SDK {props['ro.build.version.sdk']}), "
                      f"{props['ro.product.model']}, {props['ro.product.cpu.abi']}",
                "android": props["ro.build.version.release"],
                "versions": {"benchmark_model": sha256_file(self.benchmark_binary)[:16] if self.benchmark_binary else None}}
        return self._identity

    def runtime_versions(self, runtime: str, op_resolver: str | None = None) -> dict:
        from dna_deploy.host import runtime_versions

        out = runtime_versions(runtime, op_resolver)
        out.pop("ai-edge-litert", None)  # the phone runs the benchmark binary, not the Python package
        out.pop("numpy", None)
        return {**out, "benchmark_model sha256": self.identity()["versions"]["benchmark_model"]}

    def check_binary(self) -> None:
        if self.benchmark_binary is None:
            raise RuntimeUnavailable(f"{self.url}: phones are timed with LiteRT's benchmark_model: give --benchmark-binary "
                                     f"PATH ({BUILD_HINT})")
        if not Path(self.benchmark_binary).is_file():
            raise DataError(f"--benchmark-binary {self.benchmark_binary}: no such file")
        em = elf_machine(Path(self.benchmark_binary))
        machine = self.identity()["machine"]
        if em is None:
            raise DataError(f"--benchmark-binary {self.benchmark_binary} is not an ELF executable; give {BUILD_HINT}")
        if em in ELF_MACHINES and machine not in ELF_MACHINES[em] and not (em == 40 and machine == "aarch64"):
            raise TargetError(f"--benchmark-binary {self.benchmark_binary} is a {ELF_NAMES[em]} binary; phone {self.serial} "
                              f"is {machine}: give {BUILD_HINT}")

    def time_models(self, models: dict[str, Path], *, runtime: str, threads: int, op_resolver: str | None,
                    settings: dict, partial: Path, show_progress: bool = True, label: str = "models") -> dict[str, dict]:
        import random

        from dna_deploy.progress import progress_bar
        from dna_deploy.runtimes.base import confirmed

        if runtime != "litert":
            raise TargetError(f"{self.url}: phones run LiteRT models (.tflite) with benchmark_model, not {runtime}")
        self.check_binary()
        shas = {k: sha256_file(p) for k, p in models.items()}
        names = {k: f"{shas[k][:20]}.tflite" for k in models}
        run_id = fingerprint({"models": shas, "threads": threads, "op_resolver": op_resolver, "settings": settings,
                              "target": self.url, "mask": self.cpu_mask, "identity": self.host_description()})
        done = read_partial(partial, run_id, set(models))
        start_partial(partial, run_id, keep=any(r["rounds"] for r in done.values()))
        self._adb("shell", f"mkdir -p {REMOTE_DIR}")
        binary = f"{REMOTE_DIR}/benchmark_model"
        self._push(Path(self.benchmark_binary), binary)
        self._adb("shell", f"chmod 755 {binary}")
        for k in models:
            self._push(Path(models[k]), f"{REMOTE_DIR}/{names[k]}")
        delegate = delegate_for(self.device, op_resolver)
        rng = random.Random(0)
        no_probe = type("NoProbe", (), {"quiet": staticmethod(lambda p: True)})()  # a phone has no speed probe
        with progress_bar(show_progress) as bar:
            task = bar.task(f"timing {label} on {self.url}", settings["rounds"] * len(models))
            while True:
                order = [k for k in models if len(done[k]["rounds"]) < settings["rounds"]]
                if not order:
                    order = [k for k in models if len(done[k]["rounds"]) < settings["rounds"] + settings["max_extra_rounds"]
                             and not confirmed(done[k]["rounds"], done[k]["probes"], no_probe)]
                    if not order:
                        return done
                rng.shuffle(order)
                for k in order:
                    cmd = benchmark_command(binary, f"{REMOTE_DIR}/{names[k]}", threads=threads, cpu_mask=self.cpu_mask,
                                            delegate=delegate, runs=settings["runs_per_round"],
                                            warmup_runs=settings.get("warmup_runs", 2), warmup_s=settings["warmup_s"])
                    r = self._adb("shell", cmd)
                    text = r.stdout + r.stderr
                    if "Exec format error" in text or "not executable" in text:
                        raise TargetError(f"{self.url}: benchmark_model cannot run on this phone ({_last_error(text)}); "
                                          f"give {BUILD_HINT}")
                    stats = parse_benchmark_output(text)
                    line = {"key": k, "samples": [round_figure_ms(stats)], "probe": 0.0}
                    append_result(partial, line)
                    done[k]["rounds"].append(line["samples"])
                    done[k]["probes"].append(0.0)
                    bar.advance(task)

    def _push(self, local: Path, remote: str) -> None:
        """adb push, skipped when the phone already holds the same bytes (sha256sum there)."""
        have = self.shell(f"sha256sum {shlex.quote(remote)} 2>/dev/null").split()
        if have and have[0] == sha256_file(local):
            return
        r = self._adb("push", str(local), remote)
        if r.returncode != 0:
            raise TargetError(f"{self.url}: adb push {local.name} failed: {_last_error(r.stdout + r.stderr)}")
