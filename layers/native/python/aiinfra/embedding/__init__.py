"""Sentence embeddings: model build (`build`) and runtime (`embedder`).

Deliberately imports nothing, so loading one side never pulls in the other.
"""
