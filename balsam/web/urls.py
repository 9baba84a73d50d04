"""URL map of the dashboard (``ROOT_URLCONF`` set by :func:`balsam.web.server.configure`)."""
from __future__ import annotations

from django.urls import path

from balsam.web import views

urlpatterns = [
    path("", views.overview, name="overview"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/<str:job_id>/", views.job, name="job"),
    path("jobs/<str:job_id>/kill/", views.kill, name="kill"),
    path("jobs/<str:job_id>/retry/", views.retry, name="retry"),
    path("apps/", views.apps, name="apps"),
    path("workflows/", views.workflows, name="workflows"),
    path("transfers/", views.transfers, name="transfers"),
    path("api/charts/", views.charts_api, name="charts_api"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
    path("static/<str:name>", views.static, name="static"),
]
