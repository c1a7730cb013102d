"""A platform: one kind of device, as a plugin declares it to core.

The class is small on purpose: identity, fitness, config fix-ups, and which class provides
each part. Each part is its own small class with documented defaults, owned by one module:

| part | base class | required | default |
| --- | --- | --- | --- |
| device descriptor | `Device` (device.py) | no | the host CPU, fixed KV budget |
| attention + KV cache | `AttentionBackend` (attention.py) | yes | layout and sizing only |
| linear method | `LinearMethod` (linear.py) | no | torch's linear on the loaded weights |
| fused ops | `FusedOps` (ops.py) | no | the definitions in ops.py, in torch |
| communicator | `Communicator` (communicator.py) | no | torch.distributed on the device's backend |
| step runner | `StepRunner` (runner.py) | no | core's eager `ModelRunner` |
| scheduling | `SchedulingPolicy` (scheduling.py) | no | chunked, mixed steps of any shape |

Core checks every class a plugin declares against these bases when it loads the plugin
(`contract.check_platform`): a public method the base does not have (a misspelt override)
or a signature that differs from the base's is refused, with the fix in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from octavo.platform.attention import AttentionBackend
from octavo.platform.communicator import Communicator
from octavo.platform.device import Device
from octavo.platform.linear import LinearMethod
from octavo.platform.ops import FusedOps
from octavo.platform.scheduling import SchedulingPolicy

if TYPE_CHECKING:
    from octavo.platform.runner import StepRunner


@dataclass(frozen=True)
class Availability:
    """Whether a platform can run here. score 0 = unusable, `reason` says why."""

    score: int
    reason: str = ""


class Platform:
    """One kind of device. Subclass it in a plugin and return it from the `octavo_platforms`
    hook. Required: `name`, `api_version`, `availability()` and `attention_cls`."""

    #: the name users pass as --device
    name: ClassVar[str] = ""
    #: the contract version the plugin was built for: write the literal, e.g. "2.0"
    api_version: ClassVar[str] = ""
    #: the distribution that provides it (for messages)
    package: ClassVar[str] = ""
    #: what was verified where, in one line that `octavo plugins` prints (since 2.2), e.g.
    #: "kernels compiled for gfx942 in CI; never run on AMD hardware"; empty: not stated
    verified: ClassVar[str] = ""

    device_cls: ClassVar[type[Device]] = Device
    attention_cls: ClassVar[type[AttentionBackend] | None] = None
    linear_cls: ClassVar[type[LinearMethod]] = LinearMethod
    ops_cls: ClassVar[type[FusedOps]] = FusedOps
    communicator_cls: ClassVar[type[Communicator]] = Communicator
    #: None: core's eager runner (octavo.model_runner.ModelRunner)
    runner_cls: ClassVar[type[StepRunner] | None] = None
    scheduling: ClassVar[SchedulingPolicy] = SchedulingPolicy()
    #: the runner runs tensor parallelism itself, as SPMD in this one process (XLA, Neuron):
    #: core then starts no worker processes and runs one rank; the runner reads the sizes
    #: from config.parallel
    spmd: ClassVar[bool] = False

    def __init__(self) -> None:
        if self.attention_cls is None:
            raise TypeError(f"platform {self.name!r} declares no attention_cls")
        self.device = self.device_cls()
        self.attention = self.attention_cls(self.device)
        self.linear = self.linear_cls(self.device)
        self.ops = self.ops_cls(self.device)
        self.communicator = self.communicator_cls(self.device)

    @classmethod
    def availability(cls) -> Availability:
        """Score 0 = not usable here (say why); higher wins for device="auto". Must be cheap
        and must not initialize the device (discovery calls it on every machine)."""
        raise NotImplementedError

    def check_and_update_config(self, config: Any) -> None:
        """Fix up or reject the engine config for this platform (raise ValueError saying why)."""

    def join_group(self, world_size: int, rank: int, init_method: str) -> None:
        """Make this process rank `rank` of a multi-process run: the device index first, then
        the communicator's process group."""
        self.device.local_rank = rank
        self.communicator.join(world_size, rank, init_method)

    def make_runner(self, config: Any, source: Any) -> StepRunner:
        """The step runner of this process (loads the model)."""
        cls = self.runner_cls
        if cls is None:
            from octavo.model_runner import ModelRunner

            cls = ModelRunner
        return cls(config, self, source)
