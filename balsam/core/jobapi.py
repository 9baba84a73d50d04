"""The classic BalsamJob methods that derive values from a job's fields (a mixin of the model).

Derived values (``num_ranks``, ``cute_id``, ``working_directory``, ``app_cmd``, ``get_envs``),
the job's application and its scripts, and (de)serialization. Kept apart from
:mod:`balsam.core.models` so that the model module holds the schema and the state logic.
"""
from __future__ import annotations

import datetime
import json
import os
import uuid
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol

from balsam.core import schema
from balsam.core.render import job_repr
from balsam.db.django_setup import active_path
from balsam.errors import BalsamError, NoApplication


class Application(Protocol):
    """The fields of a job's application this mixin reads (an ``ApplicationDefinition``)."""

    name: str
    executable: str
    envscript: str
    preprocess: str
    postprocess: str


class JobAPI:
    """Mixin of :class:`balsam.core.models.BalsamJob`: the classic derived values and helpers."""

    app_model: ClassVar[Any]
    """The ``ApplicationDefinition`` model, given by the model class that mixes this in."""

    # Fields of the model this mixin reads (declared for type checkers).
    if TYPE_CHECKING:
        pk: Any
        job_id: Any
        name: str
        workflow: str
        application: str
        args: str
        user_workdir: str
        environ_vars: str
        num_nodes: int
        ranks_per_node: int
        threads_per_rank: int
        threads_per_core: int
        created_at: Optional[datetime.datetime]
        queued_launch_id: Optional[int]
        parents: str

        def get_parents_by_id(self) -> list[str]: ...

    # ---- derived values ---------------------------------------------------------------------

    @property
    def num_ranks(self) -> int:
        return self.num_nodes * self.ranks_per_node

    @property
    def required_num_cores(self) -> int:
        return max(1, self.ranks_per_node * self.threads_per_rank // self.threads_per_core)

    @property
    def cute_id(self) -> str:
        return schema.cute_id(self.name, self.pk)

    def get_application(self) -> Application:
        """The job's ``ApplicationDefinition`` (:class:`NoApplication` if it names none or one
        that does not exist)."""
        if not self.application:
            raise NoApplication("this job names no application")
        try:
            app: Application = self.app_model.objects.get(name=self.application)
            return app
        except self.app_model.DoesNotExist:
            raise NoApplication(f"application {self.application!r} does not exist")

    @property
    def app_cmd(self) -> str:
        return schema.app_command(self.get_application().executable, self.args)

    @property
    def envscript(self) -> Optional[str]:
        path = self.get_application().envscript
        return path if path and os.path.isfile(path) else None

    @property
    def preprocess(self) -> str:
        return self.get_application().preprocess

    @property
    def postprocess(self) -> str:
        return self.get_application().postprocess

    @property
    def working_directory(self) -> str:
        return schema.working_directory(active_path(), self.workflow, self.name, self.pk,
                                        self.user_workdir)

    def read_file_in_workdir(self, fname: str) -> str:
        path = os.path.join(self.working_directory, fname)
        if not os.path.isfile(path):
            raise ValueError(f"{fname} not found in the working directory of {self.cute_id}")
        with open(path) as fh:
            return fh.read()

    @staticmethod
    def parse_envstring(text: str) -> dict[str, str]:
        return schema.parse_envstring(text)

    def get_envs(self, timeout: bool = False, error: bool = False) -> dict[str, str]:
        """Environment variables a task or script of this job receives (on top of its own)."""
        envs = schema.parse_envstring(self.environ_vars)
        envs.update(BALSAM_JOB_ID=str(self.pk), BALSAM_PARENT_IDS=self.parents,
                    BALSAM_DB_PATH=active_path())
        if self.threads_per_rank > 1:
            envs["OMP_NUM_THREADS"] = str(self.threads_per_rank)
        if timeout:
            envs["BALSAM_JOB_TIMEOUT"] = "TRUE"
        if error:
            envs["BALSAM_JOB_ERROR"] = "TRUE"
        return envs

    # ---- serialization ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in schema.JOB_DEFAULTS}
        d.update(job_id=str(self.pk), parents=self.get_parents_by_id(),
                 created_at=self.created_at.isoformat() if self.created_at else None,
                 queued_launch_id=self.queued_launch_id)
        return d

    def serialize(self, **extra: Any) -> str:
        d = self.to_dict()
        d.update(extra)
        return json.dumps(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        job = cls(**{k: v for k, v in d.items() if k in schema.JOB_DEFAULTS})
        if d.get("job_id"):
            job.job_id = uuid.UUID(str(d["job_id"]))
        if d.get("created_at"):
            job.created_at = datetime.datetime.fromisoformat(d["created_at"])
        if d.get("queued_launch_id") is not None:
            job.queued_launch_id = d["queued_launch_id"]
        if d.get("parents"):
            job.parents = d["parents"]
        return job

    @classmethod
    def deserialize(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        return job_repr(self.to_dict(), self._app_or_none(), self._workdir_or_none())

    __str__ = __repr__

    def _app_or_none(self) -> Optional[dict[str, str]]:
        app = self.app_model.objects.filter(name=self.application).first()
        return {k: getattr(app, k) for k in schema.APP_DEFAULTS} if app else None

    def _workdir_or_none(self) -> Optional[str]:
        try:
            return self.working_directory
        except BalsamError:
            return None
