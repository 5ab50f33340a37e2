"""Evaluation: embedding similarities (CLIP-I, CLIP-T, DINO), the VLM judge, benchmark runs and reports.

Submodules import torch/transformers lazily so that ``import dsd.eval`` stays cheap.
"""
