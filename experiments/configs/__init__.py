"""Training configs: each module's ``get_config()`` returns an ``ml_collections.ConfigDict``.

``default.py`` holds every field with its default; the others start from it.
"""
