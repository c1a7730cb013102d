"""pytest plugin (entry point `pytest11`): `pytest --octavo-platform NAME` runs the
conformance suite against platform NAME, from any directory, and ends with a table
of what each kernel did.

pytest loads this module in every run of every project in the environment, so it
imports nothing heavy at module level and changes nothing unless asked.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict

import pytest

SUITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conformance")
KERNEL_MARKER = "octavo_kernel"
EXHAUSTIVE_MARKER = "octavo_exhaustive"
#: table order; any other kernel a test names is listed after these
KERNELS = (
    "platform",
    "kv_cache",
    "write_kv",
    "attend",
    "linear",
    "rms_norm",
    "rotary",
    "silu_and_mul",
    "sample",
    "communicator",
    "generate",
)
_PLATFORM_KEY = pytest.StashKey[object]()
#: optional kernel -> (the platform's part that runs it, the part's methods that make it up)
_OPTIONAL_OPS = {
    "linear": ("linear", ("create_weights", "process_weights_after_loading", "apply")),
    "rms_norm": ("ops", ("rms_norm",)),
    "rotary": ("ops", ("rotary",)),
    "silu_and_mul": ("ops", ("silu_and_mul",)),
    "sample": ("ops", ("sample",)),
}


def pytest_addoption(parser):
    group = parser.getgroup("octavo")
    group.addoption(
        "--octavo-platform",
        default=None,
        metavar="NAME",
        help="run the octavo conformance suite against this platform (as given to --device)",
    )
    group.addoption(
        "--octavo-exhaustive",
        action="store_true",
        help="run every shape x dtype combination of the suite, not a covering subset (about 3x slower)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", f"{KERNEL_MARKER}(name): the platform kernel a conformance test checks")
    config.addinivalue_line("markers", f"{EXHAUSTIVE_MARKER}: a conformance case run only with --octavo-exhaustive")
    # no test paths on the command line: run the suite, not the current directory's tests
    if config.getoption("octavo_platform") and config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [SUITE_DIR]
    config.pluginmanager.register(CapabilityReport(config), "octavo-capability-report")


def pytest_sessionstart(session):
    # Resolve once, up front: a missing or broken platform is one clear error naming
    # what is installed, not one identical fixture error per test.
    name = session.config.getoption("octavo_platform")
    if name:
        try:
            from octavo.platform import resolve_platform

            session.config.stash[_PLATFORM_KEY] = resolve_platform(name)
        except Exception as e:
            raise pytest.UsageError(f"octavo conformance: cannot use platform {name!r}: {e}") from e


def pytest_collection_modifyitems(config, items):
    if config.getoption("octavo_exhaustive"):
        return
    extra = [item for item in items if item.get_closest_marker(EXHAUSTIVE_MARKER)]
    if extra:
        config.hook.pytest_deselected(items=extra)
        items[:] = [item for item in items if not item.get_closest_marker(EXHAUSTIVE_MARKER)]


@pytest.fixture(scope="session")
def octavo_platform_name(request) -> str:
    """The platform under test; a plugin's own test module may override this fixture."""
    name = request.config.getoption("octavo_platform")
    if not name:
        pytest.skip("octavo conformance: choose a platform with --octavo-platform NAME")
    return name


@pytest.fixture(scope="session")
def octavo_platform(request, octavo_platform_name):
    """The platform instance every conformance test checks."""
    platform = request.config.stash.get(_PLATFORM_KEY, None)
    if platform is None or platform.name != octavo_platform_name:
        from octavo.platform import resolve_platform

        platform = resolve_platform(octavo_platform_name)
        request.config.stash[_PLATFORM_KEY] = platform
    return platform


class CapabilityReport:
    """Collects each conformance test's outcome under its kernel; prints the table."""

    def __init__(self, config) -> None:
        self.config = config
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.skip_reasons: dict[str, set[str]] = defaultdict(set)

    def pytest_itemcollected(self, item) -> None:
        marker = item.get_closest_marker(KERNEL_MARKER)
        if marker is not None:
            # user_properties travel with the reports (also across xdist workers)
            item.user_properties.append((KERNEL_MARKER, marker.args[0]))

    def pytest_runtest_logreport(self, report) -> None:
        kernel = dict(report.user_properties).get(KERNEL_MARKER)
        if kernel is None:
            return
        message = _message(report.longrepr)
        if report.failed:
            outcome = "not provided" if "not provided:" in message else "failed"
        elif report.skipped:
            outcome = "not provided" if "not provided:" in message else "skipped"
            if outcome == "skipped":
                self.skip_reasons[kernel].add(message.removeprefix("Skipped: "))
        elif report.when == "call":
            outcome = "passed"
        else:
            return  # a passing setup or teardown
        self.outcomes[kernel][outcome] += 1

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.outcomes:
            return
        platform = self.config.stash.get(_PLATFORM_KEY, None)
        tr = terminalreporter
        title = "octavo conformance"
        if platform is not None:
            title += (
                f": platform {platform.name!r} ({platform.package or type(platform).__module__}, "
                f"API {platform.api_version})"
            )
        tr.write_sep("=", title)
        kernels = [k for k in KERNELS if k in self.outcomes] + sorted(set(self.outcomes) - set(KERNELS))
        tr.write_line(f"{'kernel':<14} {'result':<13} {'source':<14} tests")
        for kernel in kernels:
            counts = self.outcomes[kernel]
            detail = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
            if counts["failed"]:
                result = "failed"
            elif counts["passed"]:
                result = "passed"
            elif counts["not provided"]:
                result = "not provided"
            else:
                result = "skipped"
            if counts["skipped"]:  # why, e.g. an unsupported dtype or block size
                reasons = sorted(self.skip_reasons[kernel])
                detail += f" ({'; '.join(reasons[:3])}{'; ...' if len(reasons) > 3 else ''})"
            tr.write_line(
                f"{kernel:<14} {result:<13} {_source(platform, kernel):<14} {detail}",
                red=result == "failed",
                green=result == "passed",
                yellow=result not in ("failed", "passed"),
            )


def _message(longrepr) -> str:
    """The failure or skip message alone, without the traceback's source lines."""
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # a skip: (path, lineno, message)
        return str(longrepr[2])
    crash = getattr(longrepr, "reprcrash", None)
    return crash.message if crash is not None else str(longrepr)


def _source(platform, kernel: str) -> str:
    """Whether the platform's part overrides an optional op or keeps the core default."""
    if platform is None or kernel not in _OPTIONAL_OPS:
        return ""
    from octavo.platform import FusedOps, LinearMethod

    part, methods = _OPTIONAL_OPS[kernel]
    base = {"linear": LinearMethod, "ops": FusedOps}[part]
    cls = type(getattr(platform, part))
    overridden = any(getattr(cls, m) is not getattr(base, m) for m in methods)
    return "platform" if overridden else "core default"
