#!/usr/bin/env python3
"""dna-deploy's self-contained runner: pushed to a Linux target (a board or server reached over SSH)
with the models to time, and run there by `python3 runner.py ...`. It needs Python 3 and numpy and
the runtime module only (onnxruntime, or ai-edge-litert / tflite-runtime for LiteRT): no torch, no
dna-deploy. It imports nothing from dna_deploy, on purpose (tests/targets checks it).

Why a second timing loop, and not dna_deploy/runtimes/base.py: that module imports the project
(errors, the runner registry) and the project needs torch, which a board need not have. This file
keeps the same discipline in a few lines, and the host computes every statistic from the raw
samples with base.py's own functions (quiet_stats, confirmed), so a table profiled through this
runner and one profiled locally sum the same statistic:
  - the models are timed round by round, in a shuffled order each round (as
    latency/profiler.measure_bundle does), every round of a model warming up for at least
    `warmup_s` and `warmup_runs` runs, reading the speed probe, timing `runs_per_round` runs with
    perf_counter_ns and reading the probe again (the slower of the two is the round's);
  - after `rounds` rounds, extra rounds (at most `max_extra_rounds`, each at least `spacing_s`
    after the model's previous one) for models whose fastest round is not backed by a second within
    `quiet_tolerance` whose probe was within `probe_tolerance` of the job's fastest probe
    (base.confirmed), or whose quiet spread exceeds `cv_threshold`;
  - the speed probe is base.SpeedProbe's loop (LOOP iterations, fastest of 3);
  - every round is printed as one JSON line as soon as it is timed; given the rounds already back
    (a resume), a model continues from them.
The host sends the settings; if base.py changes them, they change here too.

Commands (every reply is JSON on stdout; errors are one JSON line on stderr with exit status 3):
  identity --dir DIR   who this machine is (CPU model, flags hash, cores, machine, OS, Python,
                       module versions, free bytes in DIR)
  have --dir DIR       {file name: sha256} of the files in DIR
  time --dir DIR --jobs FILE
                       time the models FILE lists, one JSON line per round ({key, samples,
                       probe}, flushed at once), then {"done": true}; a model whose file does not
                       match its sha256 (a push cut short) is refused before anything is timed.
"""

import argparse
import hashlib
import json
import os
import platform
import signal
import sys
import time

PROBE_LOOP = 20000  # runtimes/base.SpeedProbe.LOOP
# as runtimes/onnxruntime.py; session.run returns host arrays, so a timed run includes the device's work
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]}


def emit(obj, stream=None):
    stream = stream or sys.stdout
    stream.write(json.dumps(obj) + "\n")
    stream.flush()


def fail(kind, message, **extra):
    emit(dict(error=kind, message=message, **extra), sys.stderr)
    sys.exit(3)


def _version(dist, module):
    try:
        from importlib import metadata
        return metadata.version(dist)
    except Exception:  # noqa: BLE001 - absent, or an old Python without importlib.metadata
        pass
    try:
        return getattr(__import__(module), "__version__", None)
    except Exception:  # noqa: BLE001
        return None


def identity(directory):
    model, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.processor(), platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
    except OSError:
        pass
    os.makedirs(directory, exist_ok=True)
    st = os.statvfs(directory)
    return {"cpu": model, "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "cores": os.cpu_count(), "machine": platform.machine(), "os": platform.platform(),
            "python": sys.version.split()[0], "python_build": sys.version, "node": platform.node(),
            "versions": {"numpy": _version("numpy", "numpy"), "onnxruntime": _version("onnxruntime", "onnxruntime"),
                         "ai-edge-litert": _version("ai-edge-litert", "ai_edge_litert"),
                         "tflite-runtime": _version("tflite-runtime", "tflite_runtime")},
            "free_bytes": st.f_bavail * st.f_frsize}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- runtimes
class Model:
    def __init__(self, path, runtime, threads, op_resolver, device="cpu"):
        try:
            import numpy as np
        except ImportError:
            fail("runtime-missing", "numpy is not installed on the target", pip="pip install numpy")
        self.np = np
        if runtime == "onnxruntime":
            try:
                import onnxruntime as ort
            except ImportError:
                fail("runtime-missing", "onnxruntime is not installed on the target", pip="pip install onnxruntime numpy")
            so = ort.SessionOptions()  # as runtimes/onnxruntime.py
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.log_severity_level = 3
            providers = PROVIDERS.get(device)
            if providers is None:
                fail("runtime-unsupported", "onnxruntime device %r: the runner knows cpu, cuda, tensorrt" % device)
            if providers[0] not in ort.get_available_providers():
                fail("runtime-missing", "onnxruntime on the target has no %s (it has %s)"
                     % (providers[0], ", ".join(ort.get_available_providers())), pip="pip install onnxruntime-gpu numpy")
            self.session = ort.InferenceSession(path, so, providers=providers)
            inp = self.session.get_inputs()[0]
            self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
            shape = [d if isinstance(d, int) else 1 for d in inp.shape]
            self.x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            self.run = lambda: self.session.run([self.output_name], {self.input_name: self.x})
        elif runtime == "litert":
            try:
                from ai_edge_litert.interpreter import Interpreter, OpResolverType
            except ImportError:
                try:
                    from tflite_runtime.interpreter import Interpreter, OpResolverType
                except ImportError:
                    fail("runtime-missing", "LiteRT is not installed on the target", pip="pip install ai-edge-litert numpy")
            resolver = {None: OpResolverType.AUTO, "xnnpack": OpResolverType.AUTO,  # as runtimes/litert.py
                        "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                        "reference": OpResolverType.BUILTIN_REF}[op_resolver]
            self.interpreter = Interpreter(model_path=path, num_threads=threads, experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
            inp = self.interpreter.get_input_details()[0]
            rng = np.random.default_rng(0)
            if inp["dtype"] == np.float32:
                x = rng.standard_normal(inp["shape"]).astype(np.float32)
            else:  # full-integer model: values in its range (latency does not depend on them)
                info = np.iinfo(inp["dtype"])
                x = rng.integers(info.min, info.max, size=inp["shape"], endpoint=True).astype(inp["dtype"])
            self.index, self.x, out = inp["index"], x, self.interpreter.get_output_details()[0]["index"]

            def run():
                self.interpreter.set_tensor(self.index, self.x)
                self.interpreter.invoke()
                return self.interpreter.get_tensor(out)
            self.run = run
        else:
            fail("runtime-unsupported", "runtime %r is not one this runner times (onnxruntime, litert)" % runtime)


# ---------------------------------------------------------------- the timing discipline (see the docstring)
class Probe:
    def __init__(self, fastest_ms, tolerance):
        self.fastest_ms, self.tolerance = fastest_ms, tolerance

    def measure(self):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            total = 0
            for i in range(PROBE_LOOP):
                total += i
            best = min(best, time.perf_counter() - t0)
        self.fastest_ms = min(self.fastest_ms, 1e3 * best)
        return 1e3 * best


def _p10(values):
    return _percentile(sorted(values), 0.1)


def _quiet(rounds, tolerance):
    floors = [_p10(r) for r in rounds]
    return [i for i, f in enumerate(floors) if f <= min(floors) * (1 + tolerance)] if floors else []


def confirmed(rounds, probes, speed, tolerance):
    return len([i for i in _quiet(rounds, tolerance) if probes[i] <= speed.fastest_ms * (1 + speed.tolerance)]) >= 2


def _percentile(sorted_values, q):
    k = (len(sorted_values) - 1) * q  # numpy's default (linear) percentile
    lo = int(k)
    return sorted_values[lo] + (sorted_values[min(lo + 1, len(sorted_values) - 1)] - sorted_values[lo]) * (k - lo)


def robust_cv(rounds, tolerance):
    """(p90 - p10) / (2.563 * median) of the quiet rounds pooled: base.TimingStats.cv."""
    pooled = sorted(v for i in _quiet(rounds, tolerance) for v in rounds[i])
    if not pooled:
        return float("inf")
    median = _percentile(pooled, 0.5)
    return (_percentile(pooled, 0.9) - _percentile(pooled, 0.1)) / (2.563 * median) if median > 0 else float("inf")


def time_round(model, speed, runs, warmup_s, warmup_runs):
    limit, done = time.perf_counter() + warmup_s, 0
    while done < warmup_runs or time.perf_counter() < limit:
        model.run()
        done += 1
    before = speed.measure()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        model.run()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return samples, max(before, speed.measure())


def wants_more(rounds, probes, speed, s):
    """An extra round: the fastest round not yet backed (confirmed), or the quiet spread too wide."""
    return len(rounds) < s["rounds"] + s["max_extra_rounds"] and (
        not confirmed(rounds, probes, speed, s["quiet_tolerance"]) or robust_cv(rounds, s["quiet_tolerance"]) > s["cv_threshold"])


def time_interleaved(models, state, speed, s, seed):
    """Round by round over the models of one slice, in a shuffled order each round (drift spreads
    evenly, as latency/profiler.measure_bundle does); then extra rounds for the models that want
    them, each at least spacing_s after that model's previous round. One JSON line per round."""
    import random

    rng = random.Random(seed)
    last_end = {}
    while True:
        order = [k for k in models if len(state[k][0]) < s["rounds"]]
        extra = not order
        if extra:
            order = [k for k in models if wants_more(state[k][0], state[k][1], speed, s)]
            if not order:
                return
        rng.shuffle(order)
        for k in order:
            if extra and k in last_end:
                time.sleep(max(0.0, last_end[k] + s["spacing_s"] - time.monotonic()))
            samples, probe = time_round(models[k], speed, s["runs_per_round"], s["warmup_s"], s.get("warmup_runs", 2))
            last_end[k] = time.monotonic()
            samples, probe = [round(v, 6) for v in samples], round(probe, 6)
            state[k][0].append(samples)
            state[k][1].append(probe)
            emit({"key": k, "samples": samples, "probe": probe})


def _stop_earlier_runner(directory):
    """A runner left from a dropped connection would time its models beside this one: stop it."""
    pid_file = os.path.join(directory, "runner.pid")
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip() or 0)
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            mine = b"runner.py" in f.read()
        if pid and pid != os.getpid() and mine:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not os.path.exists("/proc/%d" % pid):
                    break
                time.sleep(0.1)
    except (OSError, ValueError):
        pass
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(pid_file + ".tmp", pid_file)


def time_jobs(directory, jobs_file):
    """The jobs file: runtime, threads, op_resolver, settings, fastest_probe_ms, max_open and the
    models, each {key, file, sha256, rounds, probes} with the rounds already back (a resume)."""
    with open(jobs_file) as f:
        jobs = json.load(f)
    _stop_earlier_runner(directory)
    s = jobs["settings"]
    speed = Probe(jobs.get("fastest_probe_ms") or float("inf"), s["probe_tolerance"])
    for m in jobs["models"]:
        path = os.path.join(directory, m["file"])
        if not os.path.isfile(path) or sha256(path) != m["sha256"]:
            fail("incomplete-file", "%s on the target is missing or incomplete (a push cut short?)" % m["file"])
    state = {m["key"]: (list(m.get("rounds") or []), list(m.get("probes") or [])) for m in jobs["models"]}
    step = max(1, int(jobs.get("max_open") or len(jobs["models"]) or 1))
    for i in range(0, len(jobs["models"]), step):
        chunk = jobs["models"][i:i + step]
        models = {}
        for m in chunk:
            models[m["key"]] = Model(os.path.join(directory, m["file"]), jobs["runtime"], jobs["threads"],
                                     jobs.get("op_resolver"), jobs.get("device", "cpu"))
            models[m["key"]].run()  # first run: lazy initialisation
        time_interleaved(models, state, speed, s, seed=jobs.get("seed", 0) + i)
        models.clear()
    emit({"done": True})


def main(argv=None):
    p = argparse.ArgumentParser(prog="runner.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("identity", "have", "time"))
    p.add_argument("--dir", default=".")
    p.add_argument("--jobs")
    a = p.parse_args(argv)
    try:
        if a.command == "identity":
            emit(identity(a.dir))
        elif a.command == "have":
            emit({n: sha256(os.path.join(a.dir, n)) for n in sorted(os.listdir(a.dir))
                  if os.path.isfile(os.path.join(a.dir, n)) and not n.startswith(("runner.", "jobs."))}
                 if os.path.isdir(a.dir) else {})
        else:
            time_jobs(a.dir, a.jobs)
    except OSError as e:
        if getattr(e, "errno", None) == 28:  # ENOSPC
            fail("disk-full", "no space left on the target in %s" % a.dir)
        raise


if __name__ == "__main__":
    main()
