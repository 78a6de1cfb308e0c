#!/usr/bin/env python3
"""Zero-setup entry point: `python3 run.py demo` or `python3 run.py test`.

Creates ./.venv with Python's own venv module if it is missing (or the project changed),
installs Rivulet and its test tools into it, then runs the demo or the test suite.
Needs only Python 3.11+ and access to PyPI.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".rivulet-installed"


def _fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Rivulet needs Python 3.11+, this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating virtualenv in {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if not STAMP.exists() or STAMP.read_text() != _fingerprint():
        print("installing Rivulet and its dependencies (first run takes a minute) ...", flush=True)
        pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
        STAMP.write_text(_fingerprint())


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "up", "test", "bench"):
        print(__doc__)
        return 2
    ensure_venv()
    command, rest = argv[0], argv[1:]
    if command == "test":
        cmd = [str(BIN / "python"), "-m", "pytest", *rest]
    else:
        cmd = [str(BIN / "rivulet"), command, *rest]
    os.chdir(ROOT)
    return _run(cmd)


def _run(cmd: list[str]) -> int:
    """Run ``cmd`` and let IT handle Ctrl-C: the terminal sends SIGINT to the child too, and
    the demo stops its services and prints its summary. This wrapper only waits (a SIGTERM
    is passed on); it must not kill the child on KeyboardInterrupt, which would orphan them."""
    signal.signal(signal.SIGINT, lambda *_: None)  # a Python handler: reset to default in the child
    child = subprocess.Popen(cmd)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
