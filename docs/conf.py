"""Sphinx configuration for the celltx documentation.

Build (offline, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
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
    # Inherited scvi-tools / Lightning / torch members carry docstrings with
    # cross-references to their own docs that do not resolve here; document only what
    # celltx defines.
    "inherited-members": False,
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
nb_execution_mode = "off"  # notebooks are executed by the test suite, not by the docs
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- HTML ----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = "celltx"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "github_url": "https://github.com/celltx/celltx",  # a plain link, nothing is fetched
}
html_show_sourcelink = False
