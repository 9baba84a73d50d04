"""The write layer: Django-free writes of job and application rows on a DB-API cursor.

``jobs`` (insert one job, change one field, lock parents named by id) and ``apps`` (add, change,
rename, remove applications). They take a cursor they do not own, inside the caller's one
transaction. States are not written here: every state change goes through
:mod:`balsam.core.lifecycle` (and deletion of jobs with it); many jobs at once through
:mod:`balsam.core.bulk` (COPY). Values are checked before they get here
(:func:`balsam.core.schema.check_field`, ``coerce_field``, ``new_job_row``). Import the submodule
you need; this package imports nothing.
"""
