"""Octavo plugin kit: what a hardware vendor needs besides the core.

- `reference`: the reference attention and linear method in plain float32 torch, the fused
  ops' definitions (re-exported from core), and `ReferencePlatform` built from them: the
  ground truth of the conformance suite;
- `static_platform`: `StaticReferencePlatform`, the CPU as a static-shape device (device
  "static-reference"), for tests and to read;
- `inputs`: random paged batches (`make_forward_batch`, padded like a static-shape step
  on request) and rotary tables;
- `conformance/` + `pytest_plugin`: `pytest --octavo-platform NAME`;
- `cli`: `run_check` and `new_plugin` behind `octavo plugins check|new`;
- `template/`: the package `new_plugin` writes.

This module stays import-light: pytest loads the kit's plugin in every run.
"""

__version__ = "0.1.0"
