"""After training: export checkpoints as Hugging Face folders (`merge.py`) and generate answers (`infer.py`)."""
