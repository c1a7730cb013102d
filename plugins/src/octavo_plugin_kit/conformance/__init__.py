"""The conformance suite: every kernel of a platform against `octavo_plugin_kit.reference`.

Run it with `pytest --octavo-platform NAME` (or `octavo plugins check NAME`). A plugin
package can also run it as part of its own tests by importing `suite` (the template
does). Tests get the platform from the `octavo_platform` fixture of the kit's pytest
plugin, and mark the kernel they check with `@pytest.mark.octavo_kernel(name)`, which
feeds the capability table printed at the end.
"""
