"""`--kv-transfer-config`: vLLM's JSON, checked once at start-up with errors that say what to set."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: the connectors Octavo has; vLLM's names for a TCP/ZeroMQ pull connector map to Octavo's one
CONNECTORS = ("OctavoTcpConnector",)
ROLES = ("kv_producer", "kv_consumer")
_KEYS = {"kv_connector", "kv_role", "kv_ip", "kv_port", "kv_connector_extra_config"}
_EXTRA_KEYS = {"timeout_s", "buffer_gb"}


@dataclass(frozen=True)
class KVTransferConfig:
    """A producer (prefill instance) serves its finished prompts' KV on tcp://kv_ip:kv_port; a
    consumer (decode instance) pulls a new request's prompt KV from that address."""

    kv_connector: str
    kv_role: str
    kv_ip: str = "127.0.0.1"
    kv_port: int = 14579
    timeout_s: float = 5.0  # a consumer waits this long for the producer, then recomputes
    buffer_gb: float = 1.0  # a producer keeps this much finished KV, oldest dropped first

    @property
    def is_producer(self) -> bool:
        return self.kv_role == "kv_producer"

    @property
    def address(self) -> str:
        return f"tcp://{self.kv_ip}:{self.kv_port}"

    @classmethod
    def parse(cls, value: dict[str, Any] | str) -> KVTransferConfig:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"--kv-transfer-config is not JSON ({e}): {value!r}") from None
        if not isinstance(value, dict):
            raise ValueError(f"--kv-transfer-config must be a JSON object, got {value!r}")
        unknown = sorted(set(value) - _KEYS)
        if unknown:
            raise ValueError(f"--kv-transfer-config: unknown keys {unknown}; valid: {sorted(_KEYS)}")
        connector = value.get("kv_connector")
        if connector not in CONNECTORS:
            raise ValueError(f"--kv-transfer-config: kv_connector={connector!r} is not one of {list(CONNECTORS)}")
        role = value.get("kv_role")
        if role == "kv_both":
            raise ValueError(
                "--kv-transfer-config: kv_role 'kv_both' is not implemented; run a kv_producer (prefill) instance "
                "and a kv_consumer (decode) instance"
            )
        if role not in ROLES:
            raise ValueError(f"--kv-transfer-config: kv_role={role!r} is not one of {list(ROLES)}")
        port = value.get("kv_port", cls.kv_port)
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"--kv-transfer-config: kv_port={port!r} must be a TCP port (1..65535)")
        extra = value.get("kv_connector_extra_config") or {}
        unknown = sorted(set(extra) - _EXTRA_KEYS)
        if unknown:
            raise ValueError(
                f"--kv-transfer-config: unknown kv_connector_extra_config keys {unknown}; valid: {sorted(_EXTRA_KEYS)}"
            )
        timeout, buffer = extra.get("timeout_s", cls.timeout_s), extra.get("buffer_gb", cls.buffer_gb)
        for name, v in (("timeout_s", timeout), ("buffer_gb", buffer)):
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"--kv-transfer-config: kv_connector_extra_config.{name}={v!r} must be > 0")
        return cls(connector, role, str(value.get("kv_ip", cls.kv_ip)), port, float(timeout), float(buffer))
