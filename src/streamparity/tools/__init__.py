"""Tools around a failure and a reference: bundles, layer bisection, the NeMo generator, ONNX faults."""
