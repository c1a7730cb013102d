"""Platform discovery and the plugin contract (see hookspecs.py and interface.py)."""

from octavo.platform.discovery import (
    PlatformInfo,
    discover_platforms,
    get_plugin_manager,
    resolve_platform,
)
from octavo.platform.hookspecs import hookimpl
from octavo.platform.interface import (
    API_VERSION,
    AttentionBackend,
    AttentionMetadata,
    Availability,
    Communicator,
    DeviceProps,
    Platform,
    TorchDistributedCommunicator,
    api_compatible,
)

__all__ = [
    "API_VERSION",
    "AttentionBackend",
    "AttentionMetadata",
    "Availability",
    "Communicator",
    "DeviceProps",
    "Platform",
    "PlatformInfo",
    "TorchDistributedCommunicator",
    "api_compatible",
    "discover_platforms",
    "get_plugin_manager",
    "hookimpl",
    "resolve_platform",
]
