"""A real OpenSSH server on 127.0.0.1 (Debian's openssh-server, /usr/sbin/sshd) with a throwaway
host key and client key, its own sshd_config and a free port; and the remote side's Python: a
separate virtual environment holding only numpy, onnxruntime and ai-edge-litert (no torch, no
dna-deploy), made once and kept in ~/.cache/dna-deploy-test-remote (DNA_DEPLOY_TEST_REMOTE_VENV
names another). Both skip, with the reason printed, where they cannot be had."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
REMOTE_PACKAGES = ("numpy", "onnxruntime", "ai-edge-litert")


def _skip(reason: str):
    print(f"SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """(port, ssh config file for DNA_DEPLOY_SSH_CONFIG, user)."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        _skip(f"{SSHD}, ssh or ssh-keygen missing: apt-get install -y openssh-server openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        try:  # the privilege separation folder a root sshd needs (what the package's service makes at boot)
            os.makedirs("/run/sshd", mode=0o755)
        except OSError as e:
            _skip(f"sshd needs /run/sshd, which cannot be made here ({e})")
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
PidFile {d / 'sshd.pid'}
AuthorizedKeysFile {d / 'authorized_keys'}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
MaxStartups 50
Subsystem sftp internal-sftp
LogLevel ERROR
""")
    log = open(d / "sshd.log", "w")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT)
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (d / "ssh_config").write_text(f"""Host *
  IdentityFile {d / 'client_key'}
  IdentitiesOnly yes
  UserKnownHostsFile {d / 'known_hosts'}
  StrictHostKeyChecking yes
  LogLevel ERROR
""")
    for _ in range(50):
        if proc.poll() is not None:
            _skip(f"sshd did not start: {(d / 'sshd.log').read_text()[-300:]}")
        r = subprocess.run(["ssh", "-F", str(d / "ssh_config"), "-o", "BatchMode=yes", "-p", str(port),
                            f"{user}@127.0.0.1", "true"], capture_output=True, text=True)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    else:
        proc.terminate()
        _skip(f"sshd on 127.0.0.1:{port} refused logins: {r.stderr[-300:]}")
    yield port, d / "ssh_config", user
    proc.terminate()
    proc.wait(timeout=10)
    log.close()


def _host_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@pytest.fixture(scope="session")
def remote_python():
    """The remote side's interpreter: a venv with numpy + onnxruntime (+ ai-edge-litert) at this
    host's versions (so its table can be held to a local one), nothing else."""
    venv = Path(os.environ.get("DNA_DEPLOY_TEST_REMOTE_VENV", Path.home() / ".cache" / "dna-deploy-test-remote"))
    pins = [f"{p}=={_host_version(p)}" if _host_version(p) else p for p in REMOTE_PACKAGES]
    stamp = venv / ".dna-deploy-test-pins"
    if not (stamp.is_file() and stamp.read_text() == " ".join(pins)):
        tmp = venv.with_name(venv.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(tmp)], capture_output=True, text=True)
        if r.returncode == 0:
            r = subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", *pins],
                               capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            _skip(f"the remote side's venv could not be made (python3 -m venv; pip install {' '.join(pins)}): "
                  f"{r.stderr.strip()[-300:]}")
        (tmp / ".dna-deploy-test-pins").write_text(" ".join(pins))
        shutil.rmtree(venv, ignore_errors=True)
        tmp.rename(venv)  # bin/python is a link to the system interpreter: the venv works from its new name
    return venv / "bin" / "python"
