"""vlm-recipes: recipe-driven fine-tuning of Qwen vision-language models."""

__version__ = "0.1.0"
