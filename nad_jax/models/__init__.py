"""Models by name. Every model follows the contract in ``models/base.py``.

``MODELS`` is a plain dict: name -> module class. ``get_model`` builds one
with keyword arguments (``num_classes`` and what the module takes).
"""

from __future__ import annotations

from nad_jax.models import base

# Filled in by the model modules' imports below; a plain dict, no registry
# decorators.
MODELS: dict[str, type] = {}


def get_model(name: str, **kwargs):
  """Returns the model called ``name`` built with ``kwargs``.

  Raises:
    ValueError: ``name`` is not a known model; the message lists the known
      names.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
  return MODELS[name](**kwargs)
