"""The contract's version, and the checks that hold plugins to it.

`check_platform` runs when discovery loads a plugin: a platform that declares a part which is
not a subclass of the right base, defines a public name its base does not have (a misspelt
override would otherwise be silently ignored), overrides a method with another signature, or
was built for another major version is refused with a message naming the method and the fix.

`describe_contract()` prints every public signature of the contract; CI compares it with the
snapshot recorded for `API_VERSION` (tests/contract/), so the contract cannot change without a
version change: `python -m octavo.platform.contract` prints the current text.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any

from octavo.platform.attention import AttentionBackend, AttentionSpec, ForwardBatch, KVCacheSpec
from octavo.platform.communicator import Communicator
from octavo.platform.device import Device
from octavo.platform.linear import LinearMethod
from octavo.platform.ops import FusedOps
from octavo.platform.platform import Availability, Platform
from octavo.platform.runner import RunnerStats, StepOutput, StepRunner
from octavo.platform.scheduling import SchedulingPolicy, StaticShapes

#: The version of this contract. A plugin declares the version it was built for; core accepts
#: it when the major numbers are equal and the plugin's minor is not newer than core's (a
#: plugin may not rely on parts core lacks). Additions bump the minor, changes the major.
API_VERSION = "2.0"

#: Platform attribute -> the base class the declared class must extend
PARTS: dict[str, type] = {
    "device_cls": Device,
    "attention_cls": AttentionBackend,
    "linear_cls": LinearMethod,
    "ops_cls": FusedOps,
    "communicator_cls": Communicator,
    "runner_cls": StepRunner,
}
#: the classes and plain data of the contract, as `describe_contract` prints them
CLASSES = (Platform, Device, AttentionBackend, LinearMethod, FusedOps, Communicator, StepRunner)
DATA = (Availability, AttentionSpec, KVCacheSpec, ForwardBatch, StepOutput, RunnerStats, SchedulingPolicy, StaticShapes)


def api_compatible(plugin_version: str, core_version: str = API_VERSION) -> bool:
    try:
        p_major, p_minor = (int(x) for x in str(plugin_version).split(".")[:2])
        c_major, c_minor = (int(x) for x in core_version.split(".")[:2])
    except ValueError:
        return False
    return p_major == c_major and p_minor <= c_minor


def check_platform(cls: Any) -> list[str]:
    """Every way the platform class `cls` breaks the contract, one sentence each (empty: none)."""
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        return [f"{cls!r} is not a subclass of octavo.platform.Platform"]
    name = cls.name or cls.__name__
    errors = []
    if not isinstance(cls.name, str) or not cls.name:
        errors.append(f"{cls.__qualname__}: set `name`, the --device name users type")
    if not api_compatible(cls.api_version):
        errors.append(
            f"platform {name!r} was built for plugin API {cls.api_version or '(none)'}, but this octavo speaks "
            f"plugin API {API_VERSION}: port it to {API_VERSION.split('.')[0]}.x (docs/writing-a-plugin.md) and "
            f'set api_version = "{API_VERSION}"'
        )
    if cls.attention_cls is None:
        errors.append(f"platform {name!r}: set `attention_cls` to its AttentionBackend subclass")
    if not isinstance(cls.scheduling, SchedulingPolicy):
        errors.append(
            f"platform {name!r}: `scheduling` must be a SchedulingPolicy, not {type(cls.scheduling).__name__}"
        )
    errors += check_overrides(cls, Platform)
    for attr, base in PARTS.items():
        part = getattr(cls, attr)
        if part is None:
            continue
        if not (isinstance(part, type) and issubclass(part, base)):
            errors.append(
                f"platform {name!r}: {attr} = {part!r} must be a subclass of {base.__module__}.{base.__name__}"
            )
            continue
        if attr == "runner_cls":
            from octavo.model_runner import ModelRunner  # its hooks are the contract of runners built on it

            base = ModelRunner if issubclass(part, ModelRunner) else base
        errors += check_overrides(part, base)
    return errors


def check_overrides(cls: type, base: type) -> list[str]:
    """The public names `cls` defines between itself and `base` must be `base`'s, with the same
    signature (extra parameters allowed only with defaults). Helpers start with an underscore."""
    errors = []
    base_names = {n for n in dir(base) if not n.startswith("_")}
    for klass in cls.__mro__:
        if klass is base or issubclass(base, klass):
            break
        for attr, value in vars(klass).items():
            if attr.startswith("_") and attr != "__init__":
                continue
            where = f"{cls.__module__}.{cls.__qualname__}.{attr}"
            if attr != "__init__" and attr not in base_names:
                close = difflib.get_close_matches(attr, base_names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                errors.append(
                    f"{where} is not part of {base.__name__}'s contract: {hint}Core would never call it. Give "
                    f"your own helpers a leading underscore."
                )
                continue
            why = _signature_mismatch(value, inspect.getattr_static(base, attr))
            if why:
                errors.append(f"{where}: {why}; match {base.__name__}.{attr}{_signature(base, attr)}")
    return errors


def _signature_mismatch(impl: Any, spec: Any) -> str | None:
    kinds = (staticmethod, classmethod, property)
    for kind in kinds:
        if isinstance(spec, kind) != isinstance(impl, kind):
            return f"the base has a {kind.__name__}" if isinstance(spec, kind) else f"the base has no {kind.__name__}"
    if isinstance(spec, (type, property)) or spec is None or not callable(getattr(spec, "__func__", spec)):
        return None  # a data attribute (a part's class too): any value of the documented type will do
    try:
        have = inspect.signature(getattr(impl, "__func__", impl))
        want = inspect.signature(getattr(spec, "__func__", spec))
    except (TypeError, ValueError):
        return None
    have_params = list(have.parameters.values())
    want_params = list(want.parameters.values())
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in have_params):
        return None  # *args / **kwargs accept whatever core passes
    for i, p in enumerate(want_params):
        if i >= len(have_params):
            return f"parameter {p.name!r} is missing"
        q = have_params[i]
        if q.name != p.name or q.kind != p.kind:
            return f"parameter {i + 1} is {q.name!r}, the contract's is {p.name!r}"
    extra = [q.name for q in have_params[len(want_params) :] if q.default is q.empty]
    if extra:
        return f"extra parameter(s) {extra} need defaults (core does not pass them)"
    return None


def _signature(cls: type, attr: str) -> str:
    try:
        return str(inspect.signature(getattr(cls, attr)))
    except (TypeError, ValueError):
        return ""


def describe_contract() -> str:
    """Every public signature of the contract, one per line, in a stable order."""
    from octavo.platform import hookspecs

    lines = [f"API_VERSION {API_VERSION}"]
    for name in sorted(n for n in dir(hookspecs) if n.startswith("octavo_")):
        lines.append(f"hook {name}{inspect.signature(getattr(hookspecs, name))}")
    for cls in CLASSES:
        lines.append(f"class {cls.__name__}")
        for attr in sorted(n for n in vars(cls) if not n.startswith("_") or n == "__init__"):
            value = inspect.getattr_static(cls, attr)
            if not isinstance(value, type) and callable(getattr(value, "__func__", value)):
                kind = type(value).__name__ if isinstance(value, (staticmethod, classmethod)) else "def"
                lines.append(f"  {kind} {attr}{inspect.signature(getattr(cls, attr))}")
            elif isinstance(value, property):
                lines.append(f"  property {attr}")
            else:
                lines.append(f"  attr {attr}: {cls.__annotations__.get(attr, type(value).__name__)}")
    for cls in DATA:
        fields = ", ".join(f"{f.name}: {f.type}" for f in dataclasses.fields(cls))
        lines.append(f"data {cls.__name__}({fields})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(describe_contract(), end="")
