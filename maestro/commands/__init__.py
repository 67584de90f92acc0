"""Sub-commands of the ``maestro`` CLI, one module each (see ``maestro/cli.py``)."""
