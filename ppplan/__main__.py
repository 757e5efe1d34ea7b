"""``python -m ppplan``: the same as the ``ppplan`` command."""

from ppplan.api.cli import main

main()
