"""Where models are timed: this machine, a board over SSH, a phone over adb (targets/base.py)."""

from dna_deploy.targets.base import LocalTarget, Target, TargetError
from dna_deploy.targets.parse import parse_target

__all__ = ["LocalTarget", "Target", "TargetError", "parse_target"]
