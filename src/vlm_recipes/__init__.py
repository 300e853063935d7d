"""vlm-recipes: recipe-driven fine-tuning of Qwen vision-language models."""

import logging

__version__ = "0.1.0"

# bitsandbytes tries to fetch an optional CPU inference kernel from the Hugging Face hub at
# import and warns when it can't (always, offline). We never use that kernel: 4-bit CPU
# repacking is switched off (models/loading.py), so the warning is only noise.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
