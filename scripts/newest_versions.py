#!/usr/bin/env python
"""The newest versions every range in pyproject.toml allows, and the whole test suite on them.

``scripts/bootstrap.sh`` installs from ``requirements.lock`` (every transitive version pinned),
so a dependency release cannot break the README's commands on a fresh machine. This script is
how we see such a release first: in a fresh virtual environment it installs ``torch==2.13.0``
(the CPU build, as bootstrap does) and then the package with every extra and *no* lock, so pip
takes the newest release each range admits; it prints every version that differs from the lock,
then runs the full suite there. Run it before every stop.

    .venv/bin/python scripts/newest_versions.py               # report drift, run the suite
    .venv/bin/python scripts/newest_versions.py --write-lock  # ... and, if it passes, relock

``--write-lock`` replaces ``requirements.lock`` with this environment's versions only when the
suite passed (the lock only ever moves to versions the suite has passed on). ``--freeze VENV``
writes the lock from an existing environment instead (no install, no tests). Exit status:
pytest's, or 2 for bad usage.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
TORCH = "torch==2.13.0"  # the CPU build on this project's machines (see README)
#: Installed beside the package so the lock pins what builds the native kernel too
#: (bootstrap passes the lock as PIP_CONSTRAINT, which reaches pip's isolated build env).
BUILD_REQUIREMENTS = ("scikit-build-core",)
HEADER = """\
# Every version the README's commands install, pinned (transitive ones included).
# Written by scripts/newest_versions.py --write-lock after the full suite passed on them;
# scripts/bootstrap.sh installs with it as a constraint. pyproject.toml keeps the ranges.
"""


def freeze(python: Path) -> list[str]:
    """``name==version`` of every distribution in the environment of ``python``, but ours."""
    listed = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable",
         "--disable-pip-version-check"],
        check=True, capture_output=True, text=True).stdout
    pins = []
    for line in listed.splitlines():
        name = line.split("==", 1)[0].strip().lower()
        if "==" not in line or name in {"spatialdrop-onnx", "spatialdrop_onnx"}:
            continue  # our own editable install carries no version
        pins.append(line.strip())
    return sorted(pins, key=str.lower)


def read_lock() -> dict[str, str]:
    if not LOCK.exists():
        return {}
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def write_lock(pins: list[str]) -> None:
    temporary = LOCK.with_name(LOCK.name + ".new")
    temporary.write_text(HEADER + "".join(f"{pin}\n" for pin in pins))
    temporary.replace(LOCK)
    print(f"newest_versions: wrote {LOCK.relative_to(ROOT)} ({len(pins)} pins)", flush=True)


def drift(pins: list[str]) -> list[str]:
    """One line per distribution whose version differs from the lock (or is new, or gone)."""
    locked = read_lock()
    current = {p.split("==", 1)[0].lower(): p.split("==", 1)[1] for p in pins}
    lines = [f"  {name}: {locked.get(name, '-')} -> {current.get(name, '-')}"
             for name in sorted(set(locked) | set(current))
             if locked.get(name) != current.get(name)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-lock", action="store_true",
                        help="relock to the tested versions when the suite passes")
    parser.add_argument("--freeze", metavar="VENV", type=Path,
                        help="write the lock from this environment's versions and stop")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="build the environment in DIR and keep it (default: a temporary one)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    if args.freeze is not None:
        python = args.freeze / "bin" / "python"
        if not python.exists():
            parser.error(f"no Python at {python}")
        write_lock(freeze(python))
        return 0

    with tempfile.TemporaryDirectory(prefix="spatialdrop-newest-") as temporary:
        venv = args.keep or Path(temporary) / "venv"
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, TORCH], check=True)
        # torch stays at the CPU build bootstrap installs: an eager upgrade would take a newer
        # release, a CUDA build with a dozen nvidia-* packages (see README).
        keep_torch = Path(temporary) / "torch-constraint.txt"
        keep_torch.write_text(f"{TORCH}\n")
        subprocess.run([*pip, "--upgrade", "--upgrade-strategy", "eager", "-c", str(keep_torch),
                        "-e", f"{ROOT}[all]", *BUILD_REQUIREMENTS], check=True, cwd=ROOT)
        pins = freeze(python)
        changed = drift(pins)
        print("newest_versions: versions that differ from requirements.lock:"
              if changed else "newest_versions: the lock holds the newest versions", flush=True)
        print("\n".join(changed), flush=True)
        env = {**os.environ, "CI": "true"}
        env.pop("PYTHONPATH", None)
        # The venv's own pytest (not `python -m`), so the checkout's folder is not put on sys.path
        # ahead of the editable install's finder; tests/ is found through pyproject's testpaths.
        done = subprocess.run([str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider",
                               *args.pytest_args], cwd=ROOT, env=env, check=False)
        if done.returncode == 0 and args.write_lock:
            write_lock(pins)
        elif args.write_lock:
            print("newest_versions: the suite failed on the newest versions; the lock is unchanged",
                  flush=True)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
