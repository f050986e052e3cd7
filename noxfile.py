"""nox sessions: tests, lint, bench, inventories. Each installs the CPU torch 2.13.0 first."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
TORCH = "torch==2.13.0"


def _install(session: nox.Session, extra: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extra}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite; `nox -s tests -- -m "not slow"` skips the real subprocess loads."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "memprof", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "memprof", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Speed goals as benchmarks (pytest-benchmark), saved for comparison across runs."""
    _install(session, "test")
    session.run(
        "pytest",
        "benchmarks",
        "--benchmark-enable",
        "--benchmark-autosave",
        "--benchmark-columns=min,median,max",
        *session.posargs,
    )


@nox.session
def inventories(session: nox.Session) -> None:
    """Rebuild the shipped catalog inventories and default-plan simulations from the pinned libraries
    (`-- inventories` or `-- simulations [HUB_ID ...]` for one part)."""
    _install(session, "test")
    session.run("python", "-m", "memprof.catalog.regenerate", *session.posargs)
