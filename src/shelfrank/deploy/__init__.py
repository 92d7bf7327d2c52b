"""Deploying to a board from the workstation: ``shelfrank flash`` and what it brings along.

- :mod:`~shelfrank.deploy.target`: where a board is (a directory or ``ssh://``), how a shell
  program reaches it, and :class:`~shelfrank.deploy.target.TargetLayout`, the on-target paths
  (slots, ``current``, ``state``, ``runtime/venv``) and the steps that switch between slots.
- :mod:`~shelfrank.deploy.flash`: the flash itself as named steps, the health check, status and
  rollback.
- :mod:`~shelfrank.deploy.runtime`: ``flash --install-runtime``, a venv with shelfrank on the target.
- :mod:`~shelfrank.deploy.systemd`: ``flash --service``, the systemd units.

Nothing is imported here: the device runtime reads :class:`TargetLayout` without loading the rest.
"""
