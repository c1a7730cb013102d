"""What `octavo plugins check NAME` and `octavo plugins new NAME` run."""

from __future__ import annotations

import os
import re

from octavo_plugin_kit.pytest_plugin import SUITE_DIR

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "template")
TEMPLATE_SUFFIX = ".tmpl"
# the template's folder that becomes the import package
PACKAGE_PLACEHOLDER = "PACKAGE"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def run_check(name: str, extra_pytest_args: list[str]) -> int:
    """Run the conformance suite against platform `name`; returns pytest's exit code
    (0 = every kernel conforms, 1 = some failed, 4 = the platform cannot be used)."""
    import pytest

    # the suite's own directory (and its pytest.ini) shields the run from the
    # settings of whatever project the user stands in
    return int(pytest.main([SUITE_DIR, f"--octavo-platform={name}", *extra_pytest_args]))


def new_plugin(name: str, dest_dir: str) -> str:
    """Write a complete, installable plugin package for device `name` into
    DEST/octavo-NAME and return that path. Its kernels start as the reference ops."""
    if not _NAME.match(name):
        raise ValueError(
            f"invalid platform name {name!r}: use lowercase letters, digits and '_', starting with a letter "
            "(it becomes the --device name and the import package octavo_NAME)"
        )
    from octavo.platform import API_VERSION
    from octavo_plugin_kit import __version__ as kit_version

    dist = f"octavo-{name.replace('_', '-')}"
    values = {
        "name": name,
        "dist": dist,
        "package": f"octavo_{name}",
        "class_prefix": "".join(part.capitalize() for part in name.split("_")),
        "api_version": API_VERSION,
        "kit_version": kit_version,
    }
    root = os.path.join(os.path.abspath(dest_dir), dist)
    if os.path.exists(root):
        raise FileExistsError(f"{root} already exists; choose another destination or remove it")
    for dirpath, _, filenames in os.walk(TEMPLATE_DIR):
        for filename in filenames:
            if not filename.endswith(TEMPLATE_SUFFIX):
                continue
            src = os.path.join(dirpath, filename)
            rel = os.path.relpath(src, TEMPLATE_DIR)[: -len(TEMPLATE_SUFFIX)]
            parts = [values["package"] if p == PACKAGE_PLACEHOLDER else p for p in rel.split(os.sep)]
            dst = os.path.join(root, *parts)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(src, encoding="utf-8") as f:
                text = f.read()
            with open(dst, "w", encoding="utf-8") as f:
                f.write(_render(text, values))
    return root


def _render(text: str, values: dict[str, str]) -> str:
    """Replace each {{key}}; an unknown key is a bug in the template, so it raises."""

    def sub(match: re.Match) -> str:
        key = match.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return values[key]

    return re.sub(r"\{\{(\w+)\}\}", sub, text)
