"""The hook specification: the single, typed list of hooks a plugin may implement.

A plugin is a module named by an entry point in the group ``octavo.platforms``; its
hook functions are marked with ``octavo.platform.hookimpl``::

    from octavo.platform import hookimpl, Platform

    class MyPlatform(Platform):
        name = "mydev"
        api_version = "1.0"
        ...

    @hookimpl
    def octavo_platforms():
        return [MyPlatform]

Hooks are grouped by phase. pluggy checks every implementation against these
signatures when the plugin is registered, so a typo in a hook name or argument is
reported at discovery, not at first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from octavo.platform.interface import Platform

PROJECT = "octavo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---- discovery ---------------------------------------------------------------------


@hookspec
def octavo_platforms() -> list[type[Platform]]:
    """Return the Platform classes this plugin provides.

    Called once at discovery. Each class must set ``name`` (the --device name),
    ``api_version`` (the contract version it was built for, see
    ``octavo.platform.API_VERSION``) and implement ``availability()`` and
    ``make_attention_backend()``. Do not touch the device here: importing the plugin
    and listing its classes must be cheap and must not fail on machines without the
    device; say so through ``availability()`` instead.
    """
