"""Test automation: `uv run nox` runs tests on every supported Python found, lint and typing."""

from __future__ import annotations

import nox

nox.needs_version = ">=2024.10.9"
nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests", "lowest", "lint", "typing"]

PYTHONS = ["3.11", "3.12", "3.13"]


def sync(session: nox.Session, *groups: str) -> None:
    """Install the locked dependencies of ``groups`` into the session's virtualenv."""
    args = [arg for group in groups for arg in ("--group", group)]
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *args,
        f"--python={session.virtualenv.location}",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on asyncio and trio, with branch coverage (fails under 95%)."""
    sync(session, "test")
    session.run("coverage", "erase")
    # Two workers: the suite is CPU-bound, and two cores are the least we run on.
    session.run("coverage", "run", "-m", "pytest", "-n", "2", *session.posargs)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session(python=PYTHONS[0])
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHONS[0])
def typing(session: nox.Session) -> None:
    """mypy --strict and pyright (strict) on the package and the public-API typing file."""
    sync(session, "typing")
    session.run("mypy")
    session.run("pyright")


@nox.session(python=PYTHONS[0])
def lowest(session: nox.Session) -> None:
    """The suite against the lowest versions pyproject.toml allows: the bounds are tested."""
    session.run_install(
        "uv",
        "pip",
        "install",
        "--resolution=lowest-direct",
        "-e",
        ".[testing,cli,aiohttp,otel,redis]",
        "pytest>=8.3",
        "fastapi>=0.115",
        "hypothesis>=6.100",
        "opentelemetry-exporter-otlp-proto-http>=1.30",
        "opentelemetry-sdk>=1.30",
        "trio>=0.32",  # what anyio 4.16 needs of it
        "trustme>=1.2",
        "pytest-xdist>=3.6",
        f"--python={session.virtualenv.location}",
    )
    session.run(
        "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", *session.posargs
    )


@nox.session(python=PYTHONS[0])
def soak(session: nox.Session) -> None:
    """The no-loss soak at 20,000 SIDs (the suite runs it at 2,000); CI runs it too."""
    sync(session, "test")
    session.run(
        "python",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "tests/test_soak.py",
        env={"CCM_SOAK_SIDS": "20000"},
    )


@nox.session(python=PYTHONS[0])
def bench(session: nox.Session) -> None:
    """The benchmark suite (tens of minutes): ratios against tuned httpx and aiohttp."""
    sync(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)
