"""Octavo plugin kit: what a hardware vendor needs besides the core.

- `reference`: every kernel hook in plain float32 torch (`ReferencePlatform`), the
  ground truth of the conformance suite;
- `inputs`: random paged batches (`make_attention_metadata`) and rotary tables;
- `conformance/` + `pytest_plugin`: `pytest --octavo-platform NAME`;
- `cli`: `run_check` and `new_plugin` behind `octavo plugins check|new`;
- `template/`: the package `new_plugin` writes.

This module stays import-light: pytest loads the kit's plugin in every run.
"""

__version__ = "0.1.0"
