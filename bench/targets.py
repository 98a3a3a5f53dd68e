"""One latency table profiled here and through SSH, side by side: what the route costs (wall time
of `dna-deploy profile` both ways, the models pushed) and how far the two tables agree (per-op p10
ratio through SSH / here). The SSH side is this machine reached as ssh://USER@127.0.0.1:PORT through
a throwaway OpenSSH server started here (its own keys, sshd_config and free port, as
tests/targets/conftest.py does), its Python a venv with numpy + onnxruntime only (no torch, no
dna-deploy). The order is local, SSH, local again, so that drift of a shared machine shows as the
two local tables' own disagreement. Results in bench/results/targets.json.

Run: python bench/targets.py [--device x86-cpu-onnxruntime] [--space tiny]
     [--remote-python ~/.cache/dna-deploy-test-remote/bin/python] [--target ssh://user@board]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dna_deploy.host import host_description
from dna_deploy.io import write_json

CLI = str(Path(sys.executable).with_name("dna-deploy"))


def start_sshd(work: Path) -> tuple[subprocess.Popen, int, Path]:
    """A throwaway sshd on 127.0.0.1 (a free port, its own keys and sshd_config); (process, port, ssh config)."""
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / key)], check=True)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work / 'host_key'}\nPidFile {work / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {work / 'authorized_keys'}\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n")
    pub = (work / "host_key.pub").read_text().split()
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    (work / "ssh_config").write_text(f"Host *\n  IdentityFile {work / 'client_key'}\n  IdentitiesOnly yes\n"
                                     f"  UserKnownHostsFile {work / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(work / "sshd_config")], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc, port, work / "ssh_config"


def profile(out: Path, args, env, target: str | None = None) -> tuple[dict, float]:
    cmd = [CLI, "profile", "-d", args.device, "--space", args.space, "-o", str(out), "-f", "json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd + (["--target", target] if target else []), capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"profile failed: {r.stderr[-1000:]}")
    return json.loads(out.read_text()), wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="x86-cpu-onnxruntime")
    ap.add_argument("--space", default="tiny")
    ap.add_argument("--remote-python", default=str(Path.home() / ".cache" / "dna-deploy-test-remote" / "bin" / "python"))
    ap.add_argument("--target", help="an ssh:// target to use instead of a throwaway sshd here")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "targets.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env, sshd = dict(os.environ), None
        if args.target:
            target = args.target
        else:
            if not Path(args.remote_python).exists():
                sys.exit(f"no remote venv at {args.remote_python}: make one with python3 -m venv and "
                         "pip install numpy onnxruntime (or run tests/targets once)")
            sshd, port, config = start_sshd(work)
            env["DNA_DEPLOY_SSH_CONFIG"] = str(config)
            target = f"ssh://{os.environ.get('USER', 'root')}@127.0.0.1:{port}?python={args.remote_python}"
        try:
            local, local_s = profile(work / "local.json", args, env)
            remote, remote_s = profile(work / "remote.json", args, env, target)
            local2, local2_s = profile(work / "local2.json", args, env)
        finally:
            if sshd is not None:
                sshd.terminate()
        pushed = sum(f.stat().st_size for f in (work / "remote.bundle").iterdir())
    keys = sorted(local["entries"])
    here = {k: float(np.sqrt(local["entries"][k]["p10_ms"] * local2["entries"][k]["p10_ms"])) for k in keys}
    ratio = np.array([remote["entries"][k]["p10_ms"] / here[k] for k in keys])
    local_ratio = np.array([local2["entries"][k]["p10_ms"] / local["entries"][k]["p10_ms"] for k in keys])
    result = {
        "device": args.device, "space": args.space, "ops": len(keys), "host": host_description(),
        "target": remote["meta"]["target"], "target_host_same_as_here": remote["meta"]["host"] == {
            k: local["meta"]["host"][k] for k in remote["meta"]["host"]},
        "timing": {k: remote["meta"]["timing"][k] for k in ("rounds", "runs_per_round", "warmup_s", "max_extra_rounds")},
        "wall_s": {"local": round(local_s, 1), "ssh": round(remote_s, 1), "local_again": round(local2_s, 1)},
        "route_overhead_pct": round(100 * (remote_s / ((local_s + local2_s) / 2) - 1), 1),
        "pushed_mib": round(pushed / 2**20, 2),
        "agreement": {"median_ratio_ssh_over_local": round(float(np.median(ratio)), 3),
                      "ratio_p05": round(float(np.percentile(ratio, 5)), 3),
                      "ratio_p95": round(float(np.percentile(ratio, 95)), 3),
                      "ops_within_10pct": round(float(np.mean(np.abs(ratio - 1) <= 0.10)), 3),
                      "local_vs_local_median_ratio": round(float(np.median(local_ratio)), 3),
                      "local_vs_local_ops_within_10pct": round(float(np.mean(np.abs(local_ratio - 1) <= 0.10)), 3)},
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if shutil.which("ssh") is None or not Path("/usr/sbin/sshd").exists():
        sys.exit("needs ssh and /usr/sbin/sshd: apt-get install -y openssh-server openssh-client")
    main()
