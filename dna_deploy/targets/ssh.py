"""A Linux board or server over SSH, reached with the system `ssh` and `scp` (the user's keys, agent
and ~/.ssh/config as they are; never a password prompt: BatchMode). The host pushes
targets/runner.py (one Python file: Python 3 + numpy + the runtime, no torch, no dna-deploy) and
the model files, named by their sha256 so a second run pushes nothing twice, and reads the
runner's results as it prints them, one JSON line per model.

DNA_DEPLOY_SSH_CONFIG names another ssh config file (ssh -F), e.g. for a throwaway key in tests.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dna_deploy.errors import RuntimeUnavailable
from dna_deploy.io import fingerprint, sha256_file
from dna_deploy.targets.base import Target, TargetError, append_result, read_partial, start_partial, valid_round

RUNNER = Path(__file__).with_name("runner.py")
CONNECT_TIMEOUT_S = 15
# A dropped connection is retried this many times in a row without a model coming back, a few
# seconds apart, before giving up (a rerun still resumes from the models kept).
MAX_RECONNECTS = 4
RECONNECT_PAUSE_S = 3.0
# Models open at once on the target; more are timed in slices (each interleaved round by round).
MAX_OPEN = 512
RUNTIME_MODULES = {"onnxruntime": ("onnxruntime",), "litert": ("ai-edge-litert", "tflite-runtime")}
PIP_LINE = {"onnxruntime": "python3 -m pip install onnxruntime numpy", "litert": "python3 -m pip install ai-edge-litert numpy"}


class SshTarget(Target):
    def __init__(self, host: str, *, user: str | None = None, port: int | None = None, python: str = "python3",
                 remote_dir: str = ".cache/dna-deploy"):
        self.host, self.user, self.port, self.python, self.remote_dir = host, user, port, python, remote_dir
        self.url = f"ssh://{user + '@' if user else ''}{host}{':' + str(port) if port else ''}"
        self._identity: dict | None = None
        self.attempts = 0  # connections that timed models in the last time_models (1 = never dropped)
        self.device = "cpu"

    def configure(self, device) -> None:
        self.device = device.device  # onnxruntime: cpu, or cuda / tensorrt (its execution providers there)

    # ---------------------------------------------------------------- plumbing
    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _options(self, port_flag: str) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3"]
        if os.environ.get("DNA_DEPLOY_SSH_CONFIG"):
            opts = ["-F", os.environ["DNA_DEPLOY_SSH_CONFIG"], *opts]
        return opts + ([port_flag, str(self.port)] if self.port else [])

    def _ssh_argv(self, command: str) -> list[str]:
        if shutil.which("ssh") is None:
            raise TargetError("the ssh client is not installed here: apt-get install openssh-client")
        return ["ssh", "-T", *self._options("-p"), self.dest, command]

    def _runner_command(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (self.python, f"{self.remote_dir}/runner.py", *args, "--dir", self.remote_dir))

    def _run(self, command: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run(self._ssh_argv(command), capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            self._raise(r.returncode, r.stderr)
        return r

    def _raise(self, code: int, stderr: str, *, during: str = "") -> None:
        """One line that says what to do, from ssh's or the runner's stderr."""
        err = stderr.strip()
        last = err.splitlines()[-1] if err else ""
        for line in reversed(err.splitlines()):  # the runner's own errors: one JSON line
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and "error" in e:
                if e["error"] == "runtime-missing":
                    raise RuntimeUnavailable(f"{e['message']} ({self.url}): on the target run `{e.get('pip')}`")
                if e["error"] == "disk-full":
                    raise TargetError(f"{self.url}: {e['message']}; free space there or give another folder "
                                      f"({self.url}?dir=/path/with/space)")
                raise TargetError(f"{self.url}: {e['message']}")
        port = f" -p {self.port}" if self.port else ""
        if "Permission denied" in err and ("publickey" in err or "password" in err or code == 255):
            raise TargetError(f"{self.url} refused the key: install your public key there (ssh-copy-id{port} {self.dest}) "
                              f"or name the key in ~/.ssh/config, then check `ssh{port} {self.dest} true` works without a password")
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            raise TargetError(f"{self.url}: its host key is unknown or changed; connect once with `ssh{port} {self.dest}` "
                              "and check the fingerprint")
        if code == 255 and any(s in err for s in ("Could not resolve", "Connection refused", "timed out", "No route to host",
                                                  "Network is unreachable", "Connection closed", "Connection reset",
                                                  "kex_exchange")):
            raise TargetError(f"cannot reach {self.url} ({last[:160]}): check the address and port, and that sshd runs there "
                              f"(`ssh{port} {self.dest} true`)")
        if code == 127 or "No such file or directory" in err and self.python in err:
            raise TargetError(f"{self.url}: no Python at {self.python!r} on the target: install it (apt-get install python3 "
                              f"python3-venv) or name one: {self.url}?python=/path/to/python3")
        if "No space left on device" in err:
            raise TargetError(f"{self.url}: the disk is full in {self.remote_dir} on the target; free space there or give "
                              f"another folder ({self.url}?dir=/path/with/space)")
        raise TargetError(f"{self.url}{' ' + during if during else ''}: exit status {code}: {last[:200] or 'no message'}")

    def _push(self, files: list[Path], names: list[str]) -> None:
        """Copy files to the remote folder under the given names (scp; a file cut short is caught by
        its sha256 on the target before anything is timed)."""
        if shutil.which("scp") is None:
            raise TargetError("scp is not installed here: apt-get install openssh-client")
        staging = None
        try:  # scp keeps the local name: stage links under the wanted names
            import tempfile

            staging = Path(tempfile.mkdtemp(prefix="dna-deploy-push-"))
            for f, n in zip(files, names):
                os.symlink(Path(f).resolve(), staging / n)
            batch = 200
            for i in range(0, len(names), batch):
                argv = ["scp", "-q", *self._options("-P"), *[str(staging / n) for n in names[i:i + batch]],
                        f"{self.dest}:{self.remote_dir}/"]
                r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                if r.returncode != 0:
                    self._raise(r.returncode, r.stderr, during="copying models")
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)

    # ---------------------------------------------------------------- the interface
    def identity(self) -> dict:
        if self._identity is None:
            self._run(f"mkdir -p {shlex.quote(self.remote_dir)}")
            self._push([RUNNER], ["runner.py"])
            r = self._run(self._runner_command("identity"))
            try:
                self._identity = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                raise TargetError(f"{self.url}: the runner's identity reply was not JSON ({r.stdout[:120]!r}); is "
                                  f"{self.python} Python 3?") from None
        return self._identity

    def check_runtime(self, runtime: str) -> None:
        if runtime not in RUNTIME_MODULES:
            raise TargetError(f"{self.url}: the runner times onnxruntime and litert models; {runtime} tables are profiled "
                              "on the target itself (dna-deploy profile run-bundle there)")
        versions = self.identity().get("versions") or {}
        if not versions.get("numpy") or not any(versions.get(m) for m in RUNTIME_MODULES[runtime]):
            missing = "numpy" if not versions.get("numpy") else RUNTIME_MODULES[runtime][0]
            raise RuntimeUnavailable(f"{missing} is not installed on {self.url}: on the target run `{PIP_LINE[runtime]}`"
                                     + (f" (with {self.python} -m pip)" if self.python != "python3" else ""))

    def time_models(self, models: dict[str, Path], *, runtime: str, threads: int, op_resolver: str | None,
                    settings: dict, partial: Path, show_progress: bool = True, label: str = "models",
                    max_open: int = MAX_OPEN) -> dict[str, dict]:
        from dna_deploy.progress import progress_bar

        self.check_runtime(runtime)
        shas = {k: sha256_file(p) for k, p in models.items()}
        names = {k: f"{shas[k][:20]}{Path(p).suffix}" for k, p in models.items()}
        run_id = fingerprint({"runtime": runtime, "device": self.device, "threads": threads, "op_resolver": op_resolver, "settings": settings,
                              "models": shas, "target": self.url, "identity": self.host_description()})
        done = read_partial(partial, run_id, set(models))
        back = sum(len(r["rounds"]) for r in done.values())
        start_partial(partial, run_id, keep=back > 0)
        self.attempts, self.resumed_rounds, failures = 0, back, 0
        with progress_bar(show_progress) as bar:
            task = bar.task(f"timing {label} on {self.url}", settings["rounds"] * len(models))
            bar.advance(task, back)
            while True:
                fastest = min((p for r in done.values() for p in r["probes"]), default=None)
                self._send(done, models, names, shas, runtime, threads, op_resolver, settings, fastest, max_open)
                self.attempts += 1
                got, finished, code, stderr = self._stream(set(models), partial, done, bar, task)
                if finished:
                    return done
                if code not in (255, None, -9, -15) and "error" in stderr:
                    self._raise(code, stderr, during="timing models")
                failures = 0 if got else failures + 1
                if failures > MAX_RECONNECTS:
                    self._raise(code or 255, stderr, during=f"dropped the connection {failures} times in a row "
                                "(rerun the same command to resume with the rounds already back)")
                back = sum(len(r["rounds"]) for r in done.values())
                print(f"connection to {self.url} dropped with {back} rounds of {len(models)} {label} back; "
                      f"reconnecting to resume (attempt {self.attempts + 1})", file=sys.stderr, flush=True)
                time.sleep(RECONNECT_PAUSE_S)

    def _send(self, done, models, names, shas, runtime, threads, op_resolver, settings, fastest, max_open) -> None:
        """Push the runner, the models the target lacks (or holds cut short) and the job list (with
        the rounds already back, from which the target continues)."""
        import tempfile

        self._run(f"mkdir -p {shlex.quote(self.remote_dir)}")
        r = self._run(self._runner_command("have"))
        try:
            have = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            have = {}
        need = sorted({names[k] for k in models if have.get(names[k]) != shas[k]})
        by_name = {names[k]: models[k] for k in models}
        size = sum(Path(by_name[n]).stat().st_size for n in need)
        free = (self._identity or {}).get("free_bytes")
        if isinstance(free, int) and size > free:
            raise TargetError(f"{self.url}: the disk is full: {size / 2**20:.1f} MiB of models to push and "
                              f"{free / 2**20:.1f} MiB free in {self.remote_dir}; free space there or give another folder "
                              f"({self.url}?dir=/path/with/space)")
        jobs = {"runtime": runtime, "device": self.device, "threads": threads, "op_resolver": op_resolver, "settings": settings,
                "fastest_probe_ms": fastest, "max_open": max_open,
                "models": [{"key": k, "file": names[k], "sha256": shas[k], **done[k]} for k in models]}
        with tempfile.TemporaryDirectory() as tmp:
            jobs_file = Path(tmp) / "jobs.json"
            jobs_file.write_text(json.dumps(jobs))
            self._push([RUNNER, jobs_file, *[by_name[n] for n in need]], ["runner.py", "jobs.json", *need])

    def _stream(self, keys, partial, done, bar, task) -> tuple[int, bool, int | None, str]:
        """Run the runner and keep each round as it comes. Returns (rounds back, whether the runner
        finished, exit status, stderr)."""
        argv = self._ssh_argv(self._runner_command("time", "--jobs", f"{self.remote_dir}/jobs.json"))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        self.process = proc  # the SSH session (tests kill it to drop the connection)
        got, finished = 0, False
        try:
            for line in proc.stdout:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut short by the dropped connection: not taken
                if valid_round(r, keys):
                    append_result(partial, r)
                    done[r["key"]]["rounds"].append(r["samples"])
                    done[r["key"]]["probes"].append(r["probe"])
                    got += 1
                    bar.advance(task)
                elif isinstance(r, dict) and r.get("done") is True:
                    finished = True
        finally:
            stderr = proc.stderr.read() if proc.stderr else ""
            code = proc.wait()
        return got, finished and code == 0, code, stderr
