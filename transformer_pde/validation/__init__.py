"""The validations against theory, one module each.

Every module defines ``VALIDATION``, a :class:`transformer_pde.checks.Validation` (what it
measures, the checks against theory, the figure) and runs alone as
``python -m transformer_pde.validation.<name> [--quick] [--out DIR]``, writing
``<name>.json`` and ``<name>.png``. ``transformer-pde validate`` runs them all
(:func:`transformer_pde.checks.run_validations`); :func:`transformer_pde.checks.validation_names`
lists them. Modules whose names start with ``_`` are not validations.
"""

from __future__ import annotations

__all__: list[str] = []
