"""`--target` and a device entry's `target:`: a string to a Target (targets/base.py)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from dna_deploy.errors import DataError
from dna_deploy.targets.adb import AdbTarget
from dna_deploy.targets.base import LocalTarget, Target
from dna_deploy.targets.ssh import SshTarget

SCHEMES = ("local", "ssh://user@host[:port]", "adb://SERIAL")


def parse_target(text: str | None) -> Target:
    """`local` (or nothing), `ssh://user@host[:port]`, `adb://SERIAL`. SSH options after `?`:
    python=PATH (the target's interpreter, default python3), dir=PATH (where models are pushed,
    default .cache/dna-deploy on the target)."""
    if text is None or text in ("", "local"):
        return LocalTarget()
    if not isinstance(text, str):
        raise DataError(f"target must be a string like {' or '.join(SCHEMES)}, got {text!r}"[:200])
    parts = urlsplit(text)
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if parts.scheme == "ssh":
        if not parts.hostname:
            raise DataError(f"target {text!r}: no host; write ssh://user@host[:port]")
        try:
            port = parts.port
        except ValueError:
            raise DataError(f"target {text!r}: the port is not a number from 1 to 65535") from None
        unknown = set(options) - {"python", "dir"}
        if unknown:
            raise DataError(f"target {text!r}: unknown option {sorted(unknown)[0]!r}; ssh targets take python= and dir=")
        return SshTarget(parts.hostname, user=parts.username, port=port, python=options.get("python", "python3"),
                         remote_dir=options.get("dir", ".cache/dna-deploy"))
    if parts.scheme == "adb":
        serial = parts.netloc or parts.path.lstrip("/")
        if not serial:
            raise DataError(f"target {text!r}: no device serial; write adb://SERIAL (see `adb devices`)")
        return AdbTarget(serial)
    raise DataError(f"target {text!r} is not one of: {', '.join(SCHEMES)}")
