"""The XPU step runner: the shared Triton GPU runner, with decode graphs (torch.xpu's
XPUGraph) only when asked for.

XPU graphs are new in torch and have never run under octavo on an Intel GPU, so decode
steps run eagerly unless `OCTAVO_XPU_GRAPHS=1` (docs/xpu.md); once a run on an Intel GPU
shows the graphs replay the same tokens as eager steps, the default can flip.
"""

from __future__ import annotations

import os

from octavo.graph_runner import GraphRunner
from octavo_triton.platform_parts import TritonModelRunner

GRAPHS_SWITCH = "OCTAVO_XPU_GRAPHS"


class XpuModelRunner(TritonModelRunner):
    def make_graph_runner(self) -> GraphRunner | None:
        if os.environ.get(GRAPHS_SWITCH) != "1":
            return None
        return super().make_graph_runner()
