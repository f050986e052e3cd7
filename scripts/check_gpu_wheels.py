"""Check, here and before any device time is spent, that the wheels in .whl/ fit the GPU machine.

    python3 scripts/check_gpu_wheels.py [WHEEL_DIR]      # default .whl; one line per problem, exit 1 if any
    python3 scripts/check_gpu_wheels.py --pip-args       # the `pip download` target options (fetch_gpu_wheels.sh)

The machine (the device tool's nvidia-h200) has Python 3.12 on linux x86_64, torch 2.11 and the
packages listed in scripts/gpu_device_packages.txt, and no network: every wheel must carry a tag
that Python installs, and every requirement of every wheel (its METADATA Requires-Dist, markers
evaluated for that machine, extras skipped) and of memprof itself (pyproject.toml) must be met by
a carried wheel, which shadows the machine's copy, or by the machine's own package. A requirement
on a package whose version there is unknown is printed as a `note:`, not a problem; the preflight
(scripts/gpu_preflight.py) is what finally proves the imports there.
"""

from __future__ import annotations

import argparse
import email.parser
import sys
import zipfile
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DEVICE_PACKAGES = ROOT / "scripts" / "gpu_device_packages.txt"
PYPROJECT = ROOT / "pyproject.toml"
DEVICE_PYTHON = "3.12.3"  # KINDS.md: "python3 is Python 3.12.3"
# glibc manylinux levels the wheels may need: no newer than 2.28, which the machine's image has (an
# Ubuntu-24.04-era Python); the same list is what fetch_gpu_wheels.sh asks pip to download for
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
# PEP 508 environment markers of the machine; "extra" empty, so a requirement behind an extra is skipped
MARKER_ENV = {
    "implementation_name": "cpython",
    "implementation_version": DEVICE_PYTHON,
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": DEVICE_PYTHON,
    "python_version": "3.12",
    "sys_platform": "linux",
    "extra": "",
}
# carrying these would shadow the machine's CUDA build of torch (and what it was built with)
NEVER_CARRY = ("torch", "triton")


def device_packages(path: Path = DEVICE_PACKAGES) -> dict[str, Version | None]:
    """The machine's packages by canonical name: their version, or None where it is not known."""
    packages: dict[str, Version | None] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        packages[canonicalize_name(name)] = Version(version) if version else None
    return packages


def device_tags() -> set[Tag]:
    """Every wheel tag the machine's CPython 3.12 installs."""
    interpreter = "cp312"
    tags = set(cpython_tags((3, 12), abis=[interpreter, "abi3", "none"], platforms=PLATFORMS))
    tags |= set(compatible_tags((3, 12), interpreter=interpreter, platforms=PLATFORMS))
    return tags


def pip_args() -> list[str]:
    """The `pip download` options that fetch wheels for the machine."""
    args = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{wheel.name}: {len(names)} .dist-info/METADATA files, expected one")
        return email.parser.Parser().parsestr(zf.read(names[0]).decode())


def _project_requirements(pyproject: Path) -> list[str]:
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def check(
    wheel_dir: Path, *, device: dict[str, Version | None] | None = None, pyproject: Path | None = PYPROJECT
) -> tuple[list[str], list[str]]:
    """(problems, notes) for the wheels in `wheel_dir` on the machine: one line each."""
    device = device_packages() if device is None else device
    tags = device_tags()
    problems: list[str] = []
    notes: list[str] = []
    carried: dict[str, Version] = {}
    requirers: list[tuple[str, list[str]]] = []
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        problems.append(f"no wheels in {wheel_dir}: run scripts/fetch_gpu_wheels.sh")
    for wheel in wheels:
        try:
            name, version, _build, wheel_tags = parse_wheel_filename(wheel.name)
            meta = _metadata(wheel)
        except Exception as exc:  # a bad file name or archive is one problem line, like the rest
            problems.append(f"{wheel.name}: unreadable wheel ({exc})")
            continue
        label = f"{name} {version}"
        if name in carried:
            problems.append(f"{label}: two wheels of {name} ({carried[name]} too): keep one")
        carried[name] = version
        if name in NEVER_CARRY:
            problems.append(f"{label}: never carry {name}: it would shadow the machine's CUDA build")
        if not wheel_tags & tags:
            problems.append(
                f"{label}: tags {', '.join(sorted(map(str, wheel_tags)))} do not install on CPython 3.12 "
                "manylinux x86_64"
            )
        requires_python = meta.get("Requires-Python")
        if requires_python and not SpecifierSet(requires_python).contains(DEVICE_PYTHON, prereleases=True):
            problems.append(f"{label}: needs Python {requires_python}, the machine has {DEVICE_PYTHON}")
        requirers.append((label, meta.get_all("Requires-Dist") or []))
    if pyproject is not None:
        requirers.append(("memprof (pyproject.toml)", _project_requirements(pyproject)))
    for label, requirements in requirers:
        for text in requirements:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(MARKER_ENV):
                continue
            line = _unmet(label, req, carried, device)
            if line is not None:
                (notes if line.startswith("note: ") else problems).append(line)
    return problems, notes


def _unmet(label: str, req: Requirement, carried: dict[str, Version], device: dict[str, Version | None]) -> str | None:
    """The line saying why `req` is not met on the machine (a `note:` when it cannot be known), or None."""
    name = canonicalize_name(req.name)
    wanted = f"{req.name}{req.specifier}"
    if name in carried:  # installed ahead of the machine's copy on PYTHONPATH
        if req.specifier.contains(carried[name], prereleases=True):
            return None
        return f"{label}: needs {wanted}; the carried wheel is {carried[name]}"
    if name not in device:
        return f"{label}: needs {wanted}, which is neither carried nor on the machine: carry its wheel"
    have = device[name]
    if have is None:
        return f"note: {label}: needs {wanted}; the machine has {req.name}, version unknown" if req.specifier else None
    if req.specifier.contains(have, prereleases=True):
        return None
    return f"{label}: needs {wanted}; the machine has {have}: carry a wheel of it"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel_dir", nargs="?", type=Path, default=ROOT / ".whl")
    parser.add_argument("--pip-args", action="store_true", help="print the pip download target options and exit")
    args = parser.parse_args(argv)
    if args.pip_args:
        print(" ".join(pip_args()))
        return 0
    problems, notes = check(args.wheel_dir)
    for line in notes + problems:
        print(line)
    if problems:
        return 1
    print(f"wheels ok for the GPU machine: {', '.join(sorted(p.name for p in args.wheel_dir.glob('*.whl')))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
