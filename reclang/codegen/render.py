"""Kernel templates filled in, and the generated Triton files assembled around them."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

# The templates are package data of reclang.backends (the source tree's top-level
# backends/, installed as reclang/backends): found where that package lives, which is
# not next to this file in the source tree (no import of the backends is needed).
TEMPLATES = Path(importlib.util.find_spec("reclang.backends").submodule_search_locations[0],
                 "templates")


def missing_dependency() -> str:
    """Why the triton backend cannot be used here ("" when it can)."""
    for module in ("triton", "jinja2"):
        if importlib.util.find_spec(module) is None:
            return f"needs the package {module} (pip install 'reclang[triton]')"
    return ""


def render(template: str, **slots) -> str:
    """A kernel template filled in (jinja2; undefined slots are errors)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(template).render(**slots)


IMPORTS = ["import os", "", "import torch", "import triton", "import triton.language as tl"]


def assemble(program, template: str, about: list[str], forward: str, imports=(),
             slots=None) -> str:
    """A generated file: the header (spec, its hash, the plan, `about`), the imports,
    the kernel rendered from `template` (with `slots`), then `forward` and the cell's
    step function."""
    digest = hashlib.sha256(program.ir.source.text.encode("utf-8", "surrogatepass")).hexdigest()
    digest = digest[:16]  # surrogatepass: a spec's comment may hold a lone surrogate
    header = program.header([f"Spec sha256 {digest}; plan: {program.summary}.", *about])
    kernel = render(template, **{"name": program.ir.name, **(slots or {})})
    return "\n".join(header + IMPORTS + list(imports)) + "\n\n\n" + kernel + "\n\n" + \
        forward + "\n\n\n" + program.step_function() + "\n"

