"""A pipeline file that fails to import, for the command line's error handling."""

import ledgerflow_no_such_module  # noqa: F401

import ledgerflow as lf

pipeline = lf.Pipeline("broken")
