"""Which wheels a board's python takes, and what a wheel requires: read with the ``packaging`` library.

The wheel tags and requirement strings are parsed by ``packaging`` (what pip vendors), never by
hand. :func:`manylinux_platforms` is the one list of the manylinux platform tags a glibc board
accepts; ``flash --install-runtime`` (:mod:`shelfrank.deploy.runtime`) and
``scripts/build_wheels.py`` both use it. Imports nothing of the device runtime, so the build
script can use it without the native module.
"""

from __future__ import annotations

import email.parser
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

#: the manylinux policies named before PEP 600 and the glibc each stands for
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
#: the oldest glibc a manylinux tag exists for: manylinux1 (2.5) on x86, manylinux2014 (2.17) on the
#: other architectures (the floors ``packaging.tags`` uses for the running machine)
OLDEST_GLIBC = {"x86_64": (2, 5), "i686": (2, 5)}
OLDEST_GLIBC_OTHER = (2, 17)
#: a board whose python reports no glibc version: every manylinux tag up to this one passes the
#: filter (pip on the board decides in the end)
UNKNOWN_GLIBC = (2, 99)


def manylinux_platforms(machine: str, glibc: tuple[int, int]) -> list[str]:
    """The manylinux platform tags pip on a glibc ``glibc`` ``machine`` board accepts, best first.

    For pip's ``--platform`` (which does not expand a tag into the older ones it implies) and for
    :func:`supported_tags`: ``manylinux_2_Y_<machine>`` from ``glibc`` down to the machine's oldest
    (:data:`OLDEST_GLIBC`), then the legacy aliases (``manylinux2014``, ``manylinux2010``,
    ``manylinux1``) that the glibc covers and that exist for the machine.
    """
    major, minor = glibc
    if major != 2:
        raise ValueError(f"glibc {major}.{minor}: manylinux tags are defined for glibc 2.x only")
    floor = OLDEST_GLIBC.get(machine, OLDEST_GLIBC_OTHER)
    plats = [f"manylinux_2_{m}_{machine}" for m in range(minor, floor[1] - 1, -1)]
    legacy = sorted(LEGACY_MANYLINUX.items(), key=lambda kv: kv[1], reverse=True)
    return plats + [f"{name}_{machine}" for name, need in legacy if floor <= need <= glibc]


def supported_tags(version: tuple[int, int], machine: str, glibc: tuple[int, int] | None) -> frozenset[Tag]:
    """The wheel tags a CPython ``version`` on a Linux ``machine`` with ``glibc`` installs.

    ``packaging.tags``' own lists, for a python that is not the one running here: the
    interpreter's ABI, abi3 of this and older minors, ``none``, ``pyXY``/``py3``, ``any``.
    """
    plats = [*manylinux_platforms(machine, glibc or UNKNOWN_GLIBC), f"linux_{machine}"]
    cp = f"cp{version[0]}{version[1]}"
    return frozenset(
        [*cpython_tags(version, abis=[cp], platforms=plats), *compatible_tags(version, interpreter=cp, platforms=plats)]
    )


@dataclass(frozen=True)
class Wheel:
    path: Path
    dist: str  # canonical name (PEP 503)
    version: str
    tags: frozenset[Tag]

    @classmethod
    def parse(cls, path: Path) -> Wheel | None:
        """The wheel ``path`` names, or None when the name is not a wheel file name."""
        try:
            name, version, _build, tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            return None
        return cls(path, str(name), str(version), tags)

    def fits(self, supported: frozenset[Tag]) -> bool:
        return not self.tags.isdisjoint(supported)


def requirements(wheel: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """The wheel's Requires-Dist that no extra adds, less the distributions in ``skip``.

    A requirement is an extra's when its marker holds for one of the wheel's Provides-Extra and not
    without an extra. Markers on the environment (``python_version < "3.11"``) are kept as they are:
    pip on the target evaluates them.

    Raises:
        ValueError: the wheel has no METADATA or a Requires-Dist ``packaging`` cannot read.
    """
    with zipfile.ZipFile(wheel) as z:
        meta = next((n for n in z.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            raise ValueError(f"{wheel}: no .dist-info/METADATA: not a wheel")
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    extras = msg.get_all("Provides-Extra") or []
    drop = {canonicalize_name(s) for s in skip}
    out = []
    for line in msg.get_all("Requires-Dist") or []:
        try:
            req = Requirement(line)
        except InvalidRequirement as e:
            raise ValueError(f"{wheel}: Requires-Dist {line!r}: {e}") from e
        m = req.marker
        if m is not None and not m.evaluate({"extra": ""}) and any(m.evaluate({"extra": x}) for x in extras):
            continue
        if canonicalize_name(req.name) in drop:
            continue
        out.append(str(req))
    return out


def requirement_name(spec: str) -> str:
    """The distribution a requirement string names (``'numpy>=1.24'`` → ``'numpy'``)."""
    return Requirement(spec).name
