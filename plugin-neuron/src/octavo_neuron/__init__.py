"""octavo-neuron: Octavo on AWS Trainium through the Neuron SDK (TorchNeuron, neuronx-cc), in
the contract's static-shape mode. See docs/neuron.md for what ran where.

- `platform`: `NeuronPlatform` (device "neuron") and what it declares to core;
- `runner`: the step compiled per bucket, on-device sampling included;
- `sampler`: the on-device sampler and its top-k limit;
- `sdk`: whether the SDK and a device are here (availability, the install command);
- `testing`: the test-only switch, the same platform on the CPU (device "neuron-cpu").
"""
