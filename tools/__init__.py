"""Function tools the model may call, whichever cascade tier answers (see agent/cascade.py)."""
