"""lit-swift: LLM fine-tuning as PyTorch Lightning modules driven by one LightningCLI YAML."""

__version__ = "0.1.0"
