"""Selectively editable language models: data, editing, training and evaluation."""
