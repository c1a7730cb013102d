"""Every conformance test, in one namespace, for a plugin's own test module:

    from octavo_plugin_kit.conformance.suite import *  # noqa: F403

    @pytest.fixture(scope="session")
    def octavo_platform_name():
        return "mydev"

pytest collects test functions from the module they are imported into, with their
parametrization; the fixture override picks the platform without a command-line flag.
"""

from octavo_plugin_kit.conformance.test_attention import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_end_to_end import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_kv_blocks import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_lora import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_mla import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_moe import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_ops import *  # noqa: F401,F403
from octavo_plugin_kit.conformance.test_platform import *  # noqa: F401,F403
