"""Pooling models: embeddings, classification and scores (vLLM's pooling API)."""
