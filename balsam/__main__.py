"""``python -m balsam`` runs the ``balsam`` command."""
from balsam.cli.main import run

run()
