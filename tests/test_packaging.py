"""The version floors in pyproject.toml cover what the code uses (checked against the release that
introduced each feature: torch 2.3 ``torch.amp.GradScaler("cuda")``, timm 1.0.16 ``local-dir:``)."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]

# package → (first release with every feature we use, where the code uses it)
NEEDED = {
    "torch": ("2.3", "mixedae/amp.py", 'torch.amp.GradScaler("cuda"'),
    "torchvision": ("0.18", None, None),  # the release paired with torch 2.3
    "timm": ("1.0.16", "mixedae/commands/evaluate.py", "local-dir:"),
}


def floors() -> dict[str, Version]:
    """Lower bounds of ``[project] dependencies`` (read without tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    out = {}
    for line in re.findall(r'^\s*"([^"]+)"', block, re.M):  # (not the quotes in comments)
        req = Requirement(line)
        low = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        out[req.name] = max(low) if low else Version("0")
    return out


def test_version_floors_cover_the_features_used():
    declared = floors()
    for package, (needed, path, feature) in NEEDED.items():
        assert declared[package] >= Version(needed), f"{package}>={needed} is needed, pyproject says {declared[package]}"
        if path is not None:  # the reason still holds (else update the table)
            assert feature in (ROOT / path).read_text(), (package, feature)
