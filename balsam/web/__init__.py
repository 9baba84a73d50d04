"""The web dashboard (``balsam web``): Django views over the same models and state writer as the
CLI, served by waitress behind a login token. See :mod:`balsam.web.server`."""
