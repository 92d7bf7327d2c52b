"""The local JSON service (``shelfrank serve``), in three rooms that each know one thing.

- :mod:`.endpoints`: the operations over a ``Recommender`` (typed request → typed response); no HTTP.
- :mod:`.routes`: method and path → operation, body limits, error → status code, the OpenAPI
  description; no recommender, no sockets.
- :mod:`.serve`: the HTTP/1.1 transport (standard library; docs/serve.md says why) and ``start``.
- :mod:`.metrics`: the in-process counters behind ``/metrics`` (Prometheus text format).
- ``ui/``: the kiosk page served at ``/ui/`` by ``shelfrank serve --ui``.
"""
