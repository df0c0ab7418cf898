"""``python -m cli``: the ``inferq`` command, for environments without the console script."""

from cli.main import app

app()
