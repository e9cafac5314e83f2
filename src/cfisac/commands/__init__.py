"""Sub-commands of the ``cfisac`` CLI, one module each (see ``cfisac.cli``)."""
