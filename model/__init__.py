"""The embedded hybrid Transformer–Mamba language model engine.

Usable on its own: ``from model import load``. Never imports ``maestro``, ``tools`` or ``agents``.
"""
