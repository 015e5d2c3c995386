"""The ``clothsim`` command line: a thin dispatcher over the library's functions."""
