"""Serverless vector indexes: a manifest plus immutable FAISS segments in an index store.

Writers add a segment and swap the manifest conditionally; readers load the segments and
re-check the manifest at most every refresh interval.
"""
