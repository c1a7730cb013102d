"""The plugin contract: its recorded signatures, its version rules, and the checks at load.

`describe_contract()` is compared with the snapshot recorded for `API_VERSION`, so a public
signature of the contract cannot change without a version change. Every platform the
repository ships must pass `check_platform`, and each way a class can break the contract is
refused with a sentence naming the method and the fix.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import torch

from octavo.model_runner import ModelRunner
from octavo.platform import (
    API_VERSION,
    AttentionBackend,
    Availability,
    Device,
    FusedOps,
    LinearMethod,
    Platform,
    StepRunner,
    api_compatible,
    check_platform,
    discover_platforms,
)
from octavo.platform.contract import describe_contract
from octavo_plugin_kit.reference import ReferenceAttention, ReferencePlatform

SNAPSHOTS = Path(__file__).parent / "contract"
#: distribution -> the platforms it ships through its entry points
SHIPPED = {
    "octavo-cpu": {"cpu"},
    "octavo-cuda": {"cuda"},
    "octavo-rocm": {"rocm"},
    "octavo-xpu": {"xpu"},
    "octavo-plugin-kit": {"static-reference"},
    "octavo-tpu": {"tpu", "tpu-cpu"},
    "octavo-neuron": {"neuron"},
}


def test_contract_matches_the_snapshot_of_its_version():
    snapshot = SNAPSHOTS / f"api-{API_VERSION}.txt"
    record = f"python -m octavo.platform.contract > tests/contract/api-{API_VERSION}.txt"
    assert snapshot.exists(), f"no snapshot of plugin API {API_VERSION}: record it with `{record}`"
    want, have = snapshot.read_text(), describe_contract()
    if have != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), have.splitlines(True), str(snapshot), "now"))
        pytest.fail(
            f"the plugin contract's public signatures changed, but API_VERSION is still {API_VERSION}:\n{diff}\n"
            "Bump API_VERSION in core/src/octavo/platform/contract.py (the minor for additions, the major for "
            "changes: plugins built for the old version break), then record the new snapshot with "
            "`python -m octavo.platform.contract > tests/contract/api-<version>.txt`.",
            pytrace=False,
        )


def test_contract_text_is_stable():
    text = describe_contract()
    assert text == describe_contract()
    assert text.startswith(f"API_VERSION {API_VERSION}\n")
    assert " at 0x" not in text, "a memory address in the contract's text"
    # annotations as written in the source, not reprs of strings or evaluated types
    assert "def attend(self, q: torch.Tensor, kv_cache: Any, meta: Any, layer: AttentionSpec) -> torch.Tensor" in text
    assert "'torch.Tensor'" not in text and "<class" not in text
    # the seams beyond octavo.platform: the ops' definitions, the eager runner's hooks, the structure
    for line in ("  def rms_norm(x: torch.Tensor", "  class ModelRunner(StepRunner)", "  data DecoderStructure("):
        assert f"\n{line}" in text, line


@pytest.mark.parametrize(
    "plugin,core,ok",
    [
        ("2.0", "2.0", True),
        ("2.0", "2.3", True),  # an older minor: core kept everything it relies on
        ("2.3", "2.3", True),
        ("2.4", "2.3", False),  # a newer minor: it may use parts this core lacks
        ("1.0", "2.0", False),  # another major
        ("3.0", "2.0", False),
        ("2", "2.0", False),
        ("2.0.1", "2.0", False),
        ("", "2.0", False),
        ("two", "2.0", False),
        (2.0, "2.0", False),  # the version is a string literal, "2.0"
        (None, "2.0", False),
    ],
)
def test_api_compatible(plugin, core, ok):
    assert api_compatible(plugin, core) is ok


@pytest.mark.parametrize("package", SHIPPED)
def test_every_platform_the_repository_ships_passes_the_contract(package):
    found = {i.name: i for i in discover_platforms(refresh=True) if i.package == package}
    assert SHIPPED[package] <= found.keys(), f"{package} provides {sorted(found)}, expected {sorted(SHIPPED[package])}"
    for name in SHIPPED[package]:
        info = found[name]
        assert info.platform_cls is not None, f"{package} did not load: {info.error}"
        assert check_platform(info.platform_cls) == [], f"{name}: {check_platform(info.platform_cls)}"
        assert api_compatible(info.api_version) and info.error is None, info


def test_the_kits_reference_platform_passes_the_contract():
    assert check_platform(ReferencePlatform) == []


# ---- each way a class breaks the contract ------------------------------------------------


def _platform(**attrs) -> type[Platform]:
    """A platform that passes the contract, with `attrs` changed."""
    body = {
        "name": "probe",
        "api_version": "2.0",
        "attention_cls": ReferenceAttention,
        "availability": classmethod(lambda cls: Availability(1)),
        **attrs,
    }
    return type("ProbePlatform", (Platform,), body)


def _errors(**attrs) -> str:
    return "\n".join(check_platform(_platform(**attrs)))


def test_a_platform_that_keeps_to_the_contract_passes():
    class Ops(FusedOps):
        def rms_norm(self, x, weight, eps, residual=None, out=None):  # an extra parameter with a default
            return self._norm(x, weight, eps, residual)

        def _norm(self, x, weight, eps, residual):  # a helper: a leading underscore
            return super().rms_norm(x, weight, eps, residual)

    class Linear(LinearMethod):
        def apply(self, *args, **kwargs):  # accepts whatever core passes
            return super().apply(*args, **kwargs)

    assert check_platform(_platform(ops_cls=Ops, linear_cls=Linear)) == []


def test_the_platforms_own_fields_are_checked():
    assert "ProbePlatform: set `name`" in _errors(name="")
    assert f'api_version must be a string such as "{API_VERSION}", not 2.0' in _errors(api_version=2.0)
    assert "was built for plugin API (none)" in _errors(api_version="")
    assert (
        "define the classmethod availability()"
        in check_platform(
            type(
                "NoAvailability", (Platform,), {"name": "x", "api_version": "2.0", "attention_cls": ReferenceAttention}
            )
        )[0]
    )
    assert "set `attention_cls` to its AttentionBackend subclass" in _errors(attention_cls=None)
    assert "`scheduling` must be a SchedulingPolicy, not dict" in _errors(scheduling={})
    assert check_platform(ReferenceAttention) == [
        f"{ReferenceAttention!r} is not a subclass of octavo.platform.Platform"
    ]


def test_a_part_that_is_not_a_subclass_of_its_base_is_refused():
    class Linear:
        def apply(self, layer, x):
            return x

    assert "linear_cls = " in _errors(linear_cls=Linear)
    assert "must be a subclass of octavo.platform.linear.LinearMethod" in _errors(linear_cls=Linear)


def test_a_misspelt_override_is_refused_with_the_closest_name():
    class Attention(ReferenceAttention):
        def write_kv_(self, k, v, kv_cache, meta):
            pass

    class Dev(Device):
        def synchronise(self):
            pass

    assert "Attention.write_kv_ is not part of AttentionBackend's contract: did you mean 'write_kv'?" in _errors(
        attention_cls=Attention
    )
    assert "Dev.synchronise is not part of Device's contract: did you mean 'synchronize'?" in _errors(device_cls=Dev)


@pytest.mark.parametrize(
    "method,why",
    [
        ("def rms_norm(self, x, weight, eps, residual): pass", "parameter 'residual' needs a default"),
        ("def rms_norm(self, x, w, eps, residual=None): pass", "parameter 3 is 'w', the contract's is 'weight'"),
        ("def silu_and_mul(self, x, stream): pass", "extra parameter(s) ['stream'] need defaults"),
        ("def silu_and_mul(self): pass", "parameter 'x' is missing"),
        ("silu_and_mul = None", "the base's is a method"),
        ("@staticmethod\ndef silu_and_mul(x): pass", "the base has no staticmethod"),
    ],
)
def test_an_override_with_another_signature_is_refused(method, why):
    namespace: dict = {}
    source = "class Ops(FusedOps):\n" + "".join(f"    {line}\n" for line in method.splitlines())
    exec(source, {"FusedOps": FusedOps}, namespace)
    errors = _errors(ops_cls=namespace["Ops"])
    assert why in errors and "; match FusedOps." in errors, errors


def test_kinds_of_attribute_must_match_the_base():
    class Dev(Device):
        def supported_dtypes(self):
            return (torch.float32,)

    assert "Dev.supported_dtypes: the base's is a value, not a method" in _errors(device_cls=Dev)
    errors = _errors(availability=lambda self: Availability(1))
    assert (
        "ProbePlatform.availability: the base has a classmethod; match Platform.availability(cls) -> Availability"
        in errors
    )


def test_required_methods_must_be_defined():
    class Attention(AttentionBackend):
        def write_kv(self, k, v, kv_cache, meta):
            pass

    assert "does not define attend, which AttentionBackend requires: def attend(self, q: torch.Tensor" in _errors(
        attention_cls=Attention
    )

    class Runner(StepRunner):
        def kv_cache_bytes_per_block(self):
            return 1

    errors = _errors(runner_cls=Runner)
    assert re.search(
        r"does not define collect, initialize_kv_cache, kv_cache_budget_bytes, launch, which StepRunner", errors
    )


def test_runners_built_on_core_s_eager_runner_are_held_to_its_hooks():
    class Runner(ModelRunner):
        warm_up_at_start = True

        def warm_up_batches(self):
            return [([1], [1])]

        def forward(self, batch):
            return super().forward(batch)

    assert _errors(runner_cls=Runner) == ""

    class Misspelt(ModelRunner):
        def warm_up_batch(self):
            return []

    assert "Misspelt.warm_up_batch is not part of ModelRunner's contract: did you mean 'warm_up_batches'?" in _errors(
        runner_cls=Misspelt
    )
