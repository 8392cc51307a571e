"""dvbridge: the deployable library behind function_app.py.

Importing this package must stay cheap: it runs while the worker indexes function_app.py.
"""

__version__ = "0.1.0"
