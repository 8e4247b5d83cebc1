"""Placeholder module: the llm backend lands in the next commit."""
