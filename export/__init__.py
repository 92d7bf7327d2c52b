"""Workstation export stage (fine-tune, distill, quantise, bundle). Heavy imports stay inside
functions; install with ``pip install 'shelfrank[export]'``."""

from __future__ import annotations
