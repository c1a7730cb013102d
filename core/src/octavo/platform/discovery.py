"""Find platforms: one pluggy PluginManager over the entry point group `octavo.platforms`.

The mechanism is pluggy's: each entry point names a module whose `@hookimpl` functions
implement the hooks of `hookspecs.py`; pluggy checks their arguments at registration, and a
module with a function marked as a hook that no spec names (a misspelt hook), or with no hook
at all (a forgotten @hookimpl), is refused with the hook names it should have used.

Discovery never swallows a failure: a plugin that fails to import, implements an unknown
hook, returns something that is not a list of Platform classes, breaks the contract
(`contract.check_platform`) or was built for another contract version shows up in
`discover_platforms()` with its error, and `resolve_platform` names it.
"""

from __future__ import annotations

import difflib
import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

import importlib_metadata
import pluggy

from octavo.platform import hookspecs
from octavo.platform.contract import check_platform
from octavo.platform.platform import Platform

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "octavo.platforms"


@dataclass(frozen=True)
class PlatformInfo:
    """One discovered platform (or one plugin that failed to give any)."""

    name: str
    package: str
    package_version: str
    api_version: str
    score: int
    reason: str
    platform_cls: type[Platform] | None = None
    error: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None and self.score > 0


_manager: pluggy.PluginManager | None = None
_load_errors: list[PlatformInfo] = []


def _dist_of(ep: importlib_metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?", "?"
    return dist.metadata["Name"], dist.version


def get_plugin_manager(refresh: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _manager
    if _manager is not None and not refresh:
        return _manager
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    _load_errors.clear()
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        package, version = _dist_of(ep)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
            why = _hook_errors(pm, module)
            if why:
                pm.unregister(name=ep.name)
                raise pluggy.PluginValidationError(module, why)
        except Exception as e:  # report, never skip silently
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            logger.warning("octavo plugin %r from %s failed to load: %s", ep.name, package, detail)
            _load_errors.append(
                PlatformInfo(
                    name=ep.name,
                    package=package,
                    package_version=version,
                    api_version="?",
                    score=0,
                    reason=f"plugin failed to load: {detail}",
                    error=detail,
                )
            )
    _manager = pm
    return pm


def _hook_errors(pm: pluggy.PluginManager, module: object) -> str | None:
    """Why the just-registered plugin `module` cannot work: a function marked @hookimpl whose
    name no hook has (pluggy's `check_pending`), or no hook implemented at all."""
    known = sorted(n for n in dir(hookspecs) if n.startswith("octavo_"))
    callers = pm.get_hookcallers(module) or []
    unknown = [c.name for c in callers if not c.has_spec()]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return (
            f"{getattr(module, '__name__', module)}.{unknown[0]} is marked @hookimpl, but octavo has no hook of "
            f"that name: {hint}octavo's hooks are: {', '.join(known)}"
        )
    if not callers:
        return (
            f"{getattr(module, '__name__', module)} implements none of octavo's hooks ({', '.join(known)}): "
            "mark each with @hookimpl (from octavo.platform import hookimpl)"
        )
    try:
        pm.check_pending()  # what pluggy knows beyond the above
    except pluggy.PluginValidationError as e:
        return str(e)
    return None


def register_plugin(module: object, name: str | None = None) -> None:
    """Register a plugin module by hand (tests, embedding apps), with the checks discovery
    applies to an entry point's module (PluginValidationError saying what is wrong)."""
    pm = get_plugin_manager()
    pm.register(module, name=name)
    why = _hook_errors(pm, module)
    if why:
        pm.unregister(module)
        raise pluggy.PluginValidationError(module, why)


def _package_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str]:
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return dist.project_name, dist.version
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module == getattr(plugin, "__name__", None):
            return _dist_of(ep)
    return getattr(plugin, "__name__", "?"), "?"


def _describe(cls: object, package: str, version: str) -> PlatformInfo:
    errors = check_platform(cls)
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        msg = f"{package} returned {cls!r}, which is not a Platform subclass"
        return PlatformInfo(
            repr(cls), package, version, "?", 0, "not a subclass of octavo.platform.Platform", error=msg
        )
    name = cls.name or cls.__name__
    if errors:
        msg = f"platform {name!r} from {package} {version} breaks the plugin contract: " + "; ".join(errors)
        return PlatformInfo(name, package, version, str(cls.api_version), 0, msg, cls, error=msg)
    try:
        avail = cls.availability()
    except Exception as e:
        msg = f"availability() raised {type(e).__name__}: {e}"
        return PlatformInfo(name, package, version, cls.api_version, 0, msg, cls, error=msg)
    return PlatformInfo(name, package, version, cls.api_version, int(avail.score), avail.reason, cls)


def discover_platforms(refresh: bool = False) -> list[PlatformInfo]:
    """Every platform the installed plugins provide, plus plugins that failed to load."""
    pm = get_plugin_manager(refresh=refresh)
    infos: list[PlatformInfo] = list(_load_errors)
    # call each implementation on its own so every platform is attributed to its package
    for impl in pm.hook.octavo_platforms.get_hookimpls():
        package, version = _package_of(pm, impl.plugin)
        try:
            classes = impl.function()
        except Exception as e:
            msg = f"octavo_platforms() raised {type(e).__name__}: {e}"
            infos.append(PlatformInfo(impl.plugin_name, package, version, "?", 0, msg, error=msg))
            continue
        if not isinstance(classes, (list, tuple)):
            msg = f"octavo_platforms() must return a list of Platform classes, not {classes!r}"
            infos.append(PlatformInfo(impl.plugin_name, package, version, "?", 0, msg, error=msg))
            continue
        for cls in classes:
            infos.append(_describe(cls, package, version))
    return infos


def _summary(infos: Iterable[PlatformInfo]) -> str:
    parts = []
    for i in infos:
        state = f"score {i.score}" if i.usable else (i.error or i.reason or "unavailable")
        parts.append(f"{i.name} ({i.package}: {state})")
    return ", ".join(parts) if parts else "none"


def resolve_platform(device: str = "auto") -> Platform:
    """Instantiate the platform for `device` ("auto" = highest score)."""
    infos = discover_platforms()
    if device == "auto":
        usable = [i for i in infos if i.usable]
        if not usable:
            raise RuntimeError(
                f"no usable octavo platform found; discovered: {_summary(infos)}. "
                "Install one, e.g. pip install octavo-cpu"
            )
        best = max(usable, key=lambda i: i.score)
        return best.platform_cls()  # type: ignore[misc]
    matches = [i for i in infos if i.name == device]
    if not matches:
        raise ValueError(
            f"no plugin provides device {device!r}; installed: {_summary(infos)}. Try: pip install octavo-{device}"
        )
    usable = [i for i in matches if i.usable]
    if not usable:
        why = "; ".join(f"{i.package}: {i.error or i.reason or 'score 0'}" for i in matches)
        raise RuntimeError(f"device {device!r} is installed but not usable here: {why}")
    return max(usable, key=lambda i: i.score).platform_cls()  # type: ignore[misc]
