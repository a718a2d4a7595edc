"""TensorRT: loading the module and building plans (``loader``), running them (``runner``), the plan cache."""
