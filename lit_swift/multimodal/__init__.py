"""Vision-language models built offline from parts (see `assemble.py`)."""
