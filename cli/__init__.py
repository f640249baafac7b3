"""The ``creward`` command line."""
