"""Disaggregated prefill/decode: KV moved from a prefill instance to a decode instance (docs/disaggregation.md)."""

from octavo.kv_transfer.config import KVTransferConfig
from octavo.kv_transfer.connector import KVConnector, KVTransferStats

__all__ = ["KVConnector", "KVTransferConfig", "KVTransferStats"]
