"""Inference on a trained run: `finetune chat` and `finetune evaluate`, and the one generation path they share."""
