"""shelfrank: real-time, on-device e-commerce recommendation.

``shelfrank.device`` is the lean runtime (numpy, onnxruntime, tokenizers, the native kernel);
``shelfrank.export`` is the workstation stage (torch, transformers; ``pip install 'shelfrank[export]'``).
"""

from __future__ import annotations

__version__ = "0.1.0"
