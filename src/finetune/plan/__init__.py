"""`finetune plan`: per-GPU memory estimate of a recipe before anything loads, and its report."""
