"""Static-shape parts in torch, shared by the platforms that run core's model as programs
compiled per step shape (the plugin kit's "static-reference" on the CPU, octavo-neuron):

- `attention`: `StaticAttention`, paged attention whose every shape is a bucket's and which
  reads nothing back to the host (the reference such a platform starts from);
- `runner`: `CompilingRunner`, core's runner with a step compiled by `torch.compile(fullgraph=True,
  dynamic=False)` and a count of the programs compiled after warm-up.

It is its own distribution, not a part of the plugin kit, because a platform serves with it:
the kit is a development dependency (pytest, the conformance suite, a test platform), and
core holds no compiled-graph code.
"""
