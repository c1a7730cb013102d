"""The plugin contract (version 2.2): what a hardware plugin provides to core, and discovery.

`platform.py` has the table of parts; each part's module documents its semantics. Plugins
import only from this package (`from octavo.platform import Platform, AttentionBackend, ...`).
"""

from octavo.platform.attention import AttentionBackend, AttentionSpec, ForwardBatch, KVCacheSpec
from octavo.platform.communicator import Communicator
from octavo.platform.contract import API_VERSION, api_compatible, check_platform
from octavo.platform.device import Device
from octavo.platform.discovery import PlatformInfo, discover_platforms, get_plugin_manager, resolve_platform
from octavo.platform.hookspecs import hookimpl
from octavo.platform.linear import LinearMethod
from octavo.platform.ops import FusedOps
from octavo.platform.platform import Availability, Platform
from octavo.platform.runner import RunnerStats, StepOutput, StepRunner
from octavo.platform.scheduling import SchedulingPolicy, StaticShapes, bucket_for, powers_of_two

__all__ = [
    "API_VERSION",
    "AttentionBackend",
    "AttentionSpec",
    "Availability",
    "Communicator",
    "Device",
    "ForwardBatch",
    "FusedOps",
    "KVCacheSpec",
    "LinearMethod",
    "Platform",
    "PlatformInfo",
    "RunnerStats",
    "SchedulingPolicy",
    "StaticShapes",
    "StepOutput",
    "StepRunner",
    "api_compatible",
    "bucket_for",
    "check_platform",
    "discover_platforms",
    "get_plugin_manager",
    "hookimpl",
    "powers_of_two",
    "resolve_platform",
]
