"""A module that imports but defines no Pipeline object."""

NOT_A_PIPELINE = 1
