"""The public surface: names, docstrings, and what stays private.

The rule: every name in the ``__all__`` of a private module (``ccm_async._x`` or
``ccm_async.testing._x``) is public, exported by ``ccm_async`` (or, for a test
helper, by ``ccm_async.testing``), unless :data:`INTERNAL` lists it as the
house's own plumbing, shared between its modules. A class added to a module's
``__all__`` fails here until the package exports it or it is listed.
"""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import subprocess
import sys
import typing
from collections.abc import Iterator
from types import ModuleType

import pytest

import ccm_async
import ccm_async.testing

PACKAGES = (ccm_async, ccm_async.testing)
PUBLIC = {name for package in PACKAGES for name in package.__all__}

INTERNAL = {
    "ccm_async._aiohttp": {"AiohttpEngine", "client_timeout"},
    "ccm_async._attempt": {"Attempts"},
    "ccm_async._body": {"decompress", "over_declared_cap", "read_capped", "too_large"},
    "ccm_async._bulk": {"gather_results", "stream_results"},
    "ccm_async._cli": {"cli"},
    "ccm_async._cli_demo": {"run_demo", "serve_fake"},
    "ccm_async._cli_export": {"run_export"},
    "ccm_async._cli_fetch": {
        "FetchOptions",
        "client_from_env",
        "fetch_and_summarize",
        "retry_for",
        "run_fetch",
    },
    "ccm_async._cli_files": {
        "CSV_COLUMNS",
        "ErrorsFile",
        "OutputError",
        "RecordFile",
        "csv_row",
        "json_line",
        "output_format",
        "resume_point",
        "utf8",
    },
    "ccm_async._cli_get": {"run_get"},
    "ccm_async._cli_input": {
        "InputError",
        "allow_long_csv_fields",
        "distinct",
        "in_daemon_thread",
        "read_sids",
    },
    "ccm_async._cli_jobfile": {
        "JOB_FILE_SUFFIXES",
        "JobFile",
        "JobFileError",
        "JobStatus",
        "exported_calls",
        "failed_sids",
        "failure_name",
        "job_status",
        "open_job",
        "read_job",
    },
    "ccm_async._cli_otel": {"exporting"},
    "ccm_async._cli_status": {"run_status", "status_lines"},
    "ccm_async._cli_summary": {"Summary", "error_code", "progress", "stderr_console"},
    "ccm_async._command": {"EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "main", "silence_stdout"},
    "ccm_async._config": {
        "DEFAULT_TIMEOUT",
        "MAX_BODY_BYTES",
        "Credentials",
        "call_sid_of",
        "check_timeout",
        "resolve_base_url",
        "settings_from_env",
        "validate_call_sid",
    },
    "ccm_async._convert": {
        "API_VERSIONS",
        "ApiVersion",
        "MAX_RECORDINGS",
        "V3_KEYS",
        "call_from_dict",
        "call_to_dict",
        "converter",
        "decode_response",
        "known_or_str",
        "loads",
        "structure_call",
        "structure_datetime",
        "structure_int",
        "structure_str",
    },
    "ccm_async._errors": {
        "Secrets",
        "api_error",
        "forget_frames",
        "one_line",
        "shown",
    },
    "ccm_async._retry_after": {"parse_retry_after"},
    "ccm_async._flights": {"SingleFlight", "TerminalCache"},
    "ccm_async._http": {
        "reply",
        "ClientEngine",
        "Engine",
        "PoolEngine",
        "Reply",
        "default_ssl_context",
        "failures_as_transport_errors",
    },
    "ccm_async._loops": {"PerLoop", "current_loop"},
    "ccm_async._engines": {"own_engine"},
    "ccm_async._pacing": {"HeaderPacer", "RateWindow", "parse_rate_window"},
    "ccm_async._otel": {"OtelTelemetry"},
    "ccm_async._polling": {"poll_until_terminal"},
    "ccm_async._retry": {
        "Caller",
        "Deadline",
        "Lookup",
        "RetryBudget",
        "backoff_is_instant",
        "is_retryable",
        "timed_out",
    },
    "ccm_async._setup": {
        "DEFAULT_RETRY",
        "MAX_CONCURRENCY_LIMIT",
        "Setup",
        "check_count",
        "check_lookup_timeout",
        "client_setup",
    },
    "ccm_async._stats": {"Counters"},
    "ccm_async._telemetry": {
        "LookupTrace",
        "RequestTrace",
        "Scope",
        "Telemetry",
        "WaitReason",
        "telemetry_for",
    },
    "ccm_async._shared": {"SharedStore", "SharedWindow"},
    "ccm_async._throttle": {
        "AdaptiveRate",
        "Permit",
        "Release",
        "SlidingWindow",
        "Slots",
        "Throttle",
        "redacted_url",
    },
    "ccm_async.testing._fake": {"serve_asgi"},
    "ccm_async._transport": {"Backend", "Pool", "fits", "pool_class", "pool_limits"},
}


def private_modules() -> Iterator[ModuleType]:
    for package in PACKAGES:
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{package.__name__}."):
            leaf = info.name.rpartition(".")[2]
            if leaf.startswith("_") and not leaf.startswith("__"):  # not __main__
                yield importlib.import_module(info.name)


def exported(package: ModuleType) -> Iterator[tuple[str, object]]:
    """The package's public names and objects, ``__version__`` aside."""
    for name in package.__all__:
        if not name.startswith("__"):
            yield name, getattr(package, name)


def test_all_is_sorted() -> None:
    for package in PACKAGES:
        assert package.__all__ == sorted(package.__all__), package.__name__


def test_every_name_in_a_module_all_is_exported_or_internal() -> None:
    unexported = [
        f"{module.__name__}.{name}"
        for module in private_modules()
        for name in getattr(module, "__all__", ())
        if name not in PUBLIC and name not in INTERNAL.get(module.__name__, ())
    ]
    assert not unexported, "export these from the package, or list them in INTERNAL"


def test_internal_names_exist_and_are_not_exported() -> None:
    modules = {module.__name__: module for module in private_modules()}
    for module_name, names in INTERNAL.items():
        assert names <= set(modules[module_name].__all__), module_name
        assert not names & PUBLIC, module_name


def test_every_public_name_has_a_docstring() -> None:
    for package in PACKAGES:
        for name, obj in exported(package):
            if not inspect.isclass(obj):
                continue
            assert inspect.getdoc(obj), name
            for attr, member in vars(obj).items():
                if attr.startswith("_") or (
                    not callable(member) and not isinstance(member, property | classmethod)
                ):
                    continue
                assert inspect.getdoc(getattr(obj, attr)), f"{name}.{attr}"


def test_public_names_show_and_pickle_as_the_package_s() -> None:
    for package in PACKAGES:
        for name, obj in exported(package):
            assert getattr(obj, "__module__", None) == package.__name__, name
            assert pickle.loads(pickle.dumps(obj)) is obj, name  # noqa: S301 - our own bytes


def test_type_hints_of_public_classes_resolve_where_they_are_shown() -> None:
    # typing.get_type_hints (and cattrs through it) looks string annotations up in
    # the class's __module__, now ccm_async.
    for name, obj in exported(ccm_async):
        if inspect.isclass(obj):
            assert isinstance(typing.get_type_hints(obj), dict), name


# Loaded on first use: the converter on the first call decoded, tenacity on a first
# retry, httpcore (which imports trio when installed) with the first pool.
DEFERRED = {"cattrs", "tenacity", "httpcore", "trio"}
# And before them, the library itself: its public names are imported on first use,
# so that the command's --version and --help load click alone.
LIBRARY = {"anyio", "attr", "attrs", "httpx", "rich"} | DEFERRED
COMMAND = "from ccm_async._cli import cli\ntry:\n    cli([{!r}])\nexcept SystemExit:\n    pass\n"


@pytest.mark.parametrize(
    ("start", "unloaded"),
    [
        ("import ccm_async", LIBRARY),
        ("from ccm_async import AsyncCcmClient", DEFERRED),
        (COMMAND.format("--version"), LIBRARY),
        (COMMAND.format("--help"), LIBRARY),
    ],
    ids=["import", "first-use", "--version", "--help"],
)
def test_starting_up_leaves_the_heavy_dependencies_to_first_use(
    start: str, unloaded: set[str]
) -> None:
    probe = f"{start}\nimport sys\nprint(sorted(set(sys.modules) & set({sorted(unloaded)!r})))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines()[-1] == "[]"


def test_the_public_names_are_loaded_together_on_first_use() -> None:
    probe = (
        "import ccm_async, sys\n"
        "assert 'ccm_async._errors' not in sys.modules\n"
        "client = ccm_async.AsyncCcmClient\n"
        "print(ccm_async.CallNotFoundError.__module__, 'RetryPolicy' in vars(ccm_async))\n"
        "print(sorted(set(ccm_async.__all__) - set(dir(ccm_async))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.splitlines() == ["ccm_async True", "[]"]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        ccm_async.nothing  # type: ignore[attr-defined]  # noqa: B018 - the access raises
