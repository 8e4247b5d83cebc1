"""Placeholder module: the qwen-vl backend lands in the next commit."""
