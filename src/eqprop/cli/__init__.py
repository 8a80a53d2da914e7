"""The ``eqprop`` command line (generated from the config dataclasses)."""
