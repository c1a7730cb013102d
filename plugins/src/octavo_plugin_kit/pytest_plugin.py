"""pytest plugin: `pytest --octavo-platform NAME` runs the conformance suite (in progress)."""


def pytest_addoption(parser):
    group = parser.getgroup("octavo")
    group.addoption("--octavo-platform", default=None, help="run the octavo conformance suite for this platform")
