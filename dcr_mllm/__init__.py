"""dcr-mllm: DCR-enhanced vision towers for multimodal LLMs."""

__version__ = "0.1.0"
