"""`--print-config`: what a request would build, without building. The recipe is planned
on the tree in hand exactly as a build plans it, with nothing written (a tarball is
unpacked into a scratch folder that goes away)."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

from . import vendor
from .fetch import fetch_sdist, unpack
from .prefix import cache_home
from .recipe import plan_recipe
from .request import Request
from .source import resolve
from .xmake import BACKEND_TOOLS, configure_command


def describe(req: Request, tree: Path | None = None) -> list[str]:
    """The request's configuration as `name: value` lines (recipe lines indented).
    `tree`: the request's source already unpacked (read, never written), to spare
    unpacking it again when asking about several backends."""
    nccl = vendor.find_nccl() if req.ccl else None
    cudnn = vendor.find_cudnn() if req.backend == "nvidia" else None
    source = req.source or resolve(fetch_sdist(cache_home() / "sdist"))
    with tempfile.TemporaryDirectory(prefix="infinicore-config-") as work:
        if tree is None:
            tree = source.path if source.kind == "tree" else unpack(source, Path(work))
        recipe = plan_recipe(tree, source, req.backend, req.cuda_arch, req.ccl, req.ops, nccl,
                             cudnn, xmake_options=req.xmake_options, write=False)
    option = recipe.backend
    assert option is not None
    how = f"--{option.option}, from {option.origin}"
    if option.define:
        how += f" ({option.define})"
    if option.companions:
        how += f", with {', '.join('--' + c for c in option.companions)}"
    tools = [*BACKEND_TOOLS.get(req.backend, ["c++"]), "xmake"]
    needs = f"{', '.join(tools)} on PATH"
    if option.environment:
        needs += ("; the tree's xmake files read $" + ", $".join(option.environment)
                  + " (where the vendor SDK is)")
    lines = [
        f"backend: {req.backend} ({how})",
        f"source: {source.label} [{source.key}]",
        f"prefix: {req.prefix}",
        f"configure: {shlex.join(configure_command('xmake', recipe.flags))}",
        f"xmake options: {' '.join(recipe.xmake_options) or 'none'}",
        f"ops: {len(recipe.ops_built)} built, {len(recipe.ops_left_out)} left out",
        f"needs: {needs}",
        f"recipe digest: {req.digest()}",
        "recipe:",
    ]
    return lines + [f"  {line}" for line in recipe.adaptations or ["(no adaptation)"]]
