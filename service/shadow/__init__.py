"""Shadow mode: compare the vendor's answer on the raw image with its answer on the purified one.

A disagreement that piles up on one raw label is the signature of a backdoor, and that label is
its target (docs/design.md, "Shadow mode").
"""
