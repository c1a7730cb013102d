"""octavo-tpu: Octavo on Google TPUs through JAX, torchax and Pallas (docs/tpu.md)."""

__version__ = "0.1.0"
