"""Training configs: each module's ``get_config(arg)`` returns an ``ml_collections.ConfigDict``
(``default.py`` holds every field; ``common.py`` the ``FILE:ARG`` argument, the loss variants
and the grids). Run the commands from the repo root: the configs import ``experiments.configs``.
"""
