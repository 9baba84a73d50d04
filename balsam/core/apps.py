"""Django application config: label ``core`` keeps the classic table names (``core_balsamjob``)."""
from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "balsam.core"
    label = "core"
    verbose_name = "Balsam"
    default_auto_field = "django.db.models.BigAutoField"
