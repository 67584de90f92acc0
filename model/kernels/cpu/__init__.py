"""CPU kernels in C++ (``kernels.cpp``), compiled on first use and cached.

See :func:`load_ops`. The compiled library registers torch custom ops in the
``model_kernels`` namespace, so ``torch.compile`` can trace calls to them.
"""

from __future__ import annotations

from model.kernels.cpu.loader import load_ops

__all__ = ["load_ops"]
