"""Training machinery: run folders, checkpoints, loops for the CNN and the GPT."""
