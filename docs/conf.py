"""Sphinx configuration for the celltx documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import json
import sys
import types
import warnings
from datetime import date
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path

# sphinx-autodoc-typehints calls a Sphinx API that is deprecated in Sphinx 9; the Python
# DeprecationWarning it raises (once per docstring) is not a Sphinx warning, only noise.
warnings.filterwarnings("ignore", message=r".*set_application.*is deprecated")

HERE = Path(__file__).parent
# Document the working tree even when celltx is not installed (src layout).
sys.path.insert(0, str(HERE.parent / "src"))

# -- Project -------------------------------------------------------------------------
project = "celltx"
author = "celltx developers"
copyright = f"{date.today().year}, {author}"
try:
    release = _pkg_version("celltx")
except PackageNotFoundError:  # pragma: no cover
    release = "0.0.0"
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",  # after napoleon
    "myst_nb",  # Markdown (MyST) pages and notebooks; brings myst_parser
    "sphinx_design",  # the card grid of the tutorial gallery (tutorials.md)
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "jupyter_execute",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
]
# No intersphinx: the build must work offline. References to other projects (scvi-tools,
# torch, anndata, ...) render as plain code; with nitpicky off they do not warn.
nitpicky = False

# -- autodoc / autosummary -----------------------------------------------------------
autosummary_generate = True  # pages go to docs/generated (git-ignored), see api.md
autosummary_imported_members = False
autodoc_default_options = {
    "members": True,
    # Class pages (docs/_templates/autosummary/class.rst) add inherited members, so that
    # the task mixins that assemble ScGPT are documented; scvi-tools / Lightning / torch
    # members carry docstrings with cross-references to their own docs that do not resolve
    # here: _skip_foreign leaves them out.
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
# Undocumented overrides (``forward``, ``configure_optimizers``, ...) must not pull in the
# torch / Lightning / scvi-tools docstrings of the method they override.
autodoc_inherit_docstrings = False
autoclass_content = "class"

# -- napoleon (numpydoc docstrings) ---------------------------------------------------
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_use_param = True

# -- sphinx-autodoc-typehints (types in the description, not the signature) ----------
always_document_param_types = False
typehints_use_signature = False
typehints_use_signature_return = False
typehints_document_rtype = True

# -- MyST / myst-nb ------------------------------------------------------------------
# Notebooks are rendered with the outputs stored in them (scripts/refresh_tutorials.py
# executes them and stores the outputs; the test suite executes them again in memory).
nb_execution_mode = "off"
nb_output_stderr = "remove"  # stored notebooks have none; never show progress chatter
nb_merge_streams = True


# The tutorials stay in ``tutorials/`` at the repository root (where users open them and
# the tests execute them). Each page of docs/tutorials/ is a small ``.nblink`` file,
# ``{"path": "tutorials/<name>.ipynb"}`` relative to the repository root, read here as the
# notebook it names (no symlinks, no copies).
def _read_nblink(text: str, root: str):
    import nbformat

    target = Path(root) / json.loads(text)["path"]
    return nbformat.read(target, as_version=4)


_nblink = types.ModuleType("_celltx_nblink")  # myst-nb imports readers by dotted name
_nblink.read = _read_nblink
sys.modules[_nblink.__name__] = _nblink
nb_custom_formats = {".nblink": ["_celltx_nblink.read", {"root": str(HERE.parent)}, False]}

myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- HTML ----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "celltx"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "github_url": "https://github.com/celltx/celltx",  # a plain link, nothing is fetched
    # the tutorial gallery uses the whole width for its cards
    "secondary_sidebar_items": {
        "**": ["page-toc", "edit-this-page", "sourcelink"],
        "tutorials": [],
    },
}
html_show_sourcelink = False
html_static_path = ["_static"]  # thumbnails of the tutorial gallery, celltx.css
html_css_files = ["celltx.css"]
# Notebook pages need the width for code, tables and figures: no left sidebar there (the
# gallery, the top bar and previous / next links navigate between them).
html_sidebars = {"tutorials/*": []}


def _tutorials_outdated(app, env, added, changed, removed):
    # A .nblink page does not change when its notebook does: always re-read the tutorials.
    return [d for d in env.found_docs if str(env.doc2path(d)).endswith(".nblink")]


def _skip_foreign(app, what, name, obj, skip, options):
    """Skip members defined outside celltx (scvi-tools, Lightning, torch, builtins)."""
    if skip:
        return None
    target = getattr(obj, "fget", None) or getattr(obj, "__func__", None) or obj
    module = getattr(target, "__module__", None) or ""
    return None if module.startswith("celltx") else True


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign)
    app.connect("env-get-outdated", _tutorials_outdated)
