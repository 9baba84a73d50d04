"""The newer (0.6-style) API's app side: application classes in ``<site>/apps/*.py``.

``from balsam.site import ApplicationDefinition``. A *site* is one Balsam database directory
with an ``apps/`` folder (``balsam site init``). See :mod:`balsam.site.app` for the class,
:mod:`balsam.site.loader` for loading, :mod:`balsam.site.registry` for the app table rows.
"""
from balsam.site.app import (  # noqa: F401  (the public names)
    AppDefinitionError,
    ApplicationDefinition,
    ParameterError,
)
