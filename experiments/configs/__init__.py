"""Training configs: each module's ``get_config()`` returns an ``ml_collections.ConfigDict``.

``default.py`` holds every field with its default; the others start from it.

They import each other as ``experiments.configs.*``: run the commands from the repo root
(as ``python -m experiments.train`` needs anyway), or put the repo root on ``sys.path``
when loading a config file by path from your own code.
"""
