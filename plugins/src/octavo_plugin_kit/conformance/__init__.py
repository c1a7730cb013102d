"""The conformance suite: every part of a platform against `octavo_plugin_kit.reference`.

Run it with `pytest --octavo-platform NAME` (or `octavo plugins check NAME`). A plugin
package can also run it as part of its own tests by importing `suite` (the template
does). Tests get the platform from the `octavo_platform` fixture of the kit's pytest
plugin, and mark the kernel they check with `@pytest.mark.octavo_kernel(name)`, which
feeds the capability table printed at the end.

The modules: `test_platform` (identity, contract, device, collectives between 2 ranks),
`test_attention` (the KV cache, write_kv, attend), `test_ops` (the linear method and the
fused ops), `test_end_to_end` (greedy generation through `octavo.LLM`).
"""
