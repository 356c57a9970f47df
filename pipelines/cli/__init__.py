"""The ``sslpipe`` command line: the parser and its commands (``main``), the arguments several
commands share, the dataset and deploy commands, and Ray Job submission."""
