"""The hook specification: the single, typed list of hooks a plugin may implement.

A plugin is a module named by an entry point in the group ``octavo.platforms``; its
hook functions are marked with ``octavo.platform.hookimpl``::

    from octavo.platform import AttentionBackend, Availability, Platform, hookimpl

    class MyAttention(AttentionBackend):
        def write_kv(self, k, v, kv_cache, meta): ...
        def attend(self, q, kv_cache, meta, layer): ...

    class MyPlatform(Platform):
        name = "mydev"
        api_version = "2.0"  # the literal: never import octavo's API_VERSION
        attention_cls = MyAttention

        @classmethod
        def availability(cls):
            return Availability(50, "one mydev card")

    @hookimpl
    def octavo_platforms():
        return [MyPlatform]

Hooks are grouped by phase. pluggy checks every implementation against these
signatures when the plugin is registered, and discovery calls `check_pending()` after
each plugin, so a typo in a hook name or argument is reported at discovery, not ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from octavo.platform.platform import Platform

PROJECT = "octavo"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---- discovery ---------------------------------------------------------------------


@hookspec
def octavo_platforms() -> list[type[Platform]]:
    """Return the Platform classes this plugin provides.

    Called once at discovery. Each class must set ``name`` (the --device name),
    ``api_version`` (the contract version it was built for) and ``attention_cls``, and
    implement ``availability()``; discovery checks the class and its parts against the
    contract (``octavo.platform.contract.check_platform``). Do not touch the device here:
    importing the plugin and listing its classes must be cheap and must not fail on
    machines without the device; say so through ``availability()`` instead.
    """
