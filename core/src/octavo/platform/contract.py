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
import re
from typing import Any

from octavo.platform.attention import AttentionBackend
from octavo.platform.communicator import Communicator
from octavo.platform.device import Device
from octavo.platform.linear import LinearMethod
from octavo.platform.ops import FusedOps
from octavo.platform.platform import Platform
from octavo.platform.runner import StepRunner
from octavo.platform.scheduling import SchedulingPolicy

#: The version of this contract. A plugin declares the version it was built for; core accepts
#: it when the major numbers are equal and the plugin's minor is not newer than core's (a
#: plugin may not rely on parts core lacks). Additions bump the minor, changes the major.
API_VERSION = "2.3"

#: Platform attribute -> the base class the declared class must extend
PARTS: dict[str, type] = {
    "device_cls": Device,
    "attention_cls": AttentionBackend,
    "linear_cls": LinearMethod,
    "ops_cls": FusedOps,
    "communicator_cls": Communicator,
    "runner_cls": StepRunner,
}
#: methods a part must define itself: the base's raise NotImplementedError
REQUIRED: dict[type, tuple[str, ...]] = {AttentionBackend: ("write_kv", "attend")}
#: the contract beyond `octavo.platform`'s own names: the definitions of the fused ops, the
#: hooks of core's eager runner (which platform runners subclass), and the model structure
#: such runners read
SEAMS = ("octavo.platform.ops", "octavo.model_runner:ModelRunner", "octavo.models.structure")


def api_compatible(plugin_version: str, core_version: str = API_VERSION) -> bool:
    """Whether core speaking `core_version` loads a plugin built for `plugin_version`: the same
    major, and a minor not newer than core's ("2.0" runs on a 2.3 core, "2.4" does not)."""
    match = re.fullmatch(r"(\d+)\.(\d+)", plugin_version) if isinstance(plugin_version, str) else None
    if match is None:
        return False
    c_major, c_minor = (int(x) for x in core_version.split(".")[:2])
    return int(match[1]) == c_major and int(match[2]) <= c_minor


def check_platform(cls: Any) -> list[str]:
    """Every way the platform class `cls` breaks the contract, one sentence each (empty: none)."""
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        return [f"{cls!r} is not a subclass of octavo.platform.Platform"]
    name = cls.name or cls.__name__
    errors = []
    if not isinstance(cls.name, str) or not cls.name:
        errors.append(f"{cls.__qualname__}: set `name`, the --device name users type")
    if not isinstance(cls.api_version, str):
        errors.append(
            f'platform {name!r}: api_version must be a string such as "{API_VERSION}", not {cls.api_version!r}'
        )
    elif not api_compatible(cls.api_version):
        errors.append(
            f"platform {name!r} was built for plugin API {cls.api_version or '(none)'}, but this octavo speaks "
            f"plugin API {API_VERSION}: port it to {API_VERSION.split('.')[0]}.x (docs/writing-a-plugin.md) and "
            f'set api_version = "{API_VERSION}"'
        )
    if inspect.getattr_static(cls, "availability") is inspect.getattr_static(Platform, "availability"):
        errors.append(
            f"platform {name!r}: define the classmethod availability(), returning Availability(score, reason)"
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
        missing = [m for m in REQUIRED.get(base, ()) if getattr(part, m) is getattr(base, m)]
        missing += sorted(getattr(part, "__abstractmethods__", ()))
        if missing:
            errors.append(
                f"platform {name!r}: {attr} = {part.__module__}.{part.__qualname__} does not define "
                f"{', '.join(missing)}, which {base.__name__} requires: "
                + "; ".join(f"def {m}{format_signature(getattr(base, m))}" for m in missing)
            )
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
            where = f"{klass.__module__}.{klass.__qualname__}.{attr}"
            if attr != "__init__" and attr not in base_names:
                close = difflib.get_close_matches(attr, base_names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                errors.append(
                    f"{where} is not part of {base.__name__}'s contract: {hint}Core would never call it. Give "
                    f"your own helpers a leading underscore."
                )
                continue
            spec = inspect.getattr_static(base, attr)
            why = _signature_mismatch(value, spec)
            if why:
                errors.append(f"{where}: {why}; match {base.__name__}.{attr}{_signature_text(spec)}")
    return errors


def _signature_mismatch(impl: Any, spec: Any) -> str | None:
    for kind in (staticmethod, classmethod, property):
        if isinstance(spec, kind) != isinstance(impl, kind):
            return f"the base has a {kind.__name__}" if isinstance(spec, kind) else f"the base has no {kind.__name__}"
    if isinstance(spec, property):
        return None
    if not _is_method(spec):
        # a data attribute (a part's class too): any value of the documented type will do
        return "the base's is a value, not a method" if _is_method(impl) else None
    if not _is_method(impl):
        return "the base's is a method"
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
        if q.default is q.empty and p.default is not p.empty:
            return f"parameter {q.name!r} needs a default (core may leave it out)"
    extra = [q.name for q in have_params[len(want_params) :] if q.default is q.empty]
    if extra:
        return f"extra parameter(s) {extra} need defaults (core does not pass them)"
    return None


def _is_method(value: Any) -> bool:
    """A function, or one wrapped as a static or class method (not a class: classes are values)."""
    return inspect.isfunction(getattr(value, "__func__", value))


def _signature_text(spec: Any) -> str:
    return format_signature(spec) if _is_method(spec) else ""


# ---- the contract as text ------------------------------------------------------------


def format_signature(fn: Any) -> str:
    """`(a: int, b: str = 'x') -> bool`, with annotations as written in the source (strings,
    under `from __future__ import annotations`) and no memory addresses: the same text on
    every Python and torch version."""
    sig = inspect.signature(getattr(fn, "__func__", fn))
    kinds = [p.kind for p in sig.parameters.values()]
    params: list[str] = []
    for i, p in enumerate(sig.parameters.values()):
        if p.kind is p.KEYWORD_ONLY and p.KEYWORD_ONLY not in kinds[:i] and p.VAR_POSITIONAL not in kinds[:i]:
            params.append("*")
        text = ("*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else "") + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += (" = " if p.annotation is not p.empty else "=") + _value(p.default)
        params.append(text)
        if p.kind is p.POSITIONAL_ONLY and p.POSITIONAL_ONLY not in kinds[i + 1 :]:
            params.append("/")
    returns = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"({', '.join(params)}){returns}"


def _annotation(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def _value(value: Any) -> str:
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def _describe_class(cls: type) -> list[str]:
    """A class's own public members (inherited ones are its bases'), then its dataclass fields."""
    if dataclasses.is_dataclass(cls):
        fields = []
        for f in dataclasses.fields(cls):
            default = ""
            if f.default is not dataclasses.MISSING:
                default = f" = {_value(f.default)}"
            elif f.default_factory is not dataclasses.MISSING:
                default = f" = {getattr(f.default_factory, '__name__', 'factory')}()"
            fields.append(f"{f.name}: {_annotation(f.type)}{default}")
        lines = [f"data {cls.__name__}({', '.join(fields)})"]
    else:
        bases = ", ".join(b.__name__ for b in cls.__bases__ if b is not object)
        lines = [f"class {cls.__name__}" + (f"({bases})" if bases else "")]
    annotations = inspect.get_annotations(cls)
    field_names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    for attr in sorted(vars(cls)):
        if attr.startswith("_") and not (attr == "__init__" and not field_names) or attr in field_names:
            continue
        value = inspect.getattr_static(cls, attr)
        if isinstance(value, property):
            returns = inspect.signature(value.fget).return_annotation if value.fget else inspect.Signature.empty
            lines.append(f"  property {attr}" + ("" if returns is inspect.Signature.empty else f": {returns}"))
        elif _is_method(value):
            kind = type(value).__name__ if isinstance(value, (staticmethod, classmethod)) else "def"
            abstract = "abstract " if getattr(value, "__isabstractmethod__", False) else ""
            lines.append(f"  {abstract}{kind} {attr}{format_signature(value)}")
        else:
            lines.append(f"  attr {attr}: {_annotation(annotations.get(attr, type(value).__name__))}")
    return lines


def _describe(name: str, value: Any) -> list[str]:
    if isinstance(value, type):
        return _describe_class(value)
    if inspect.isfunction(value):
        return [f"def {name}{format_signature(value)}"]
    if isinstance(value, str):
        return [f"{name} = {value!r}"]
    return [f"{name}: {type(value).__name__}({_value(getattr(value, 'project_name', ''))})"]


def describe_contract() -> str:
    """Every public signature of the contract, one per line, in a stable order: the hooks,
    every name `octavo.platform` exports, and the seams outside it (`SEAMS`)."""
    import importlib

    import octavo.platform as package
    from octavo.platform import hookspecs

    lines = [f"API_VERSION {API_VERSION}"]
    for name in sorted(n for n in dir(hookspecs) if n.startswith("octavo_")):
        lines.append(f"hook {name}{format_signature(getattr(hookspecs, name))}")
    lines.append("module octavo.platform")
    exported = [getattr(package, name) for name in package.__all__]
    for name in sorted(package.__all__):
        lines += [f"  {line}" for line in _describe(name, getattr(package, name))]
    for seam in SEAMS:
        module_name, _, attr = seam.partition(":")
        module = importlib.import_module(module_name)
        lines.append(f"module {module_name}")
        names = [attr] if attr else sorted(n for n in vars(module) if not n.startswith("_"))
        for name in names:
            value = getattr(module, name)
            # what the module defines (not imports), and octavo.platform does not export already
            if getattr(value, "__module__", None) == module_name and not any(value is e for e in exported):
                lines += [f"  {line}" for line in _describe(name, value)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from octavo.platform import contract  # the module octavo.platform loaded, not this __main__ copy

    print(contract.describe_contract(), end="")
