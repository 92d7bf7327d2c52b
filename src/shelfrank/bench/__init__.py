"""Benchmarks: ``shelfrank bench kernel`` (:mod:`.kernel`), ``shelfrank bench BUNDLE``
(:mod:`.pipeline`), ``python -m shelfrank.bench.serve`` (:mod:`.serve`).

Each bench returns one typed record (system info + rows, :mod:`.record`) printed by one printer
per format: Markdown, JSON, CSV. Progress goes to stderr. Heavy imports stay inside functions, so
importing this package costs nothing.
"""
