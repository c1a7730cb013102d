"""The scheduler, block manager and request modules import no torch (design rule)."""

import subprocess
import sys


def test_core_scheduling_modules_import_no_torch():
    code = (
        "import sys\n"
        "import octavo.scheduler, octavo.block_manager, octavo.request, octavo.sampling_params\n"
        "heavy = [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
