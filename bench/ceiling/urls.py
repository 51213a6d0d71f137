"""The ceiling's one URL, /ceiling/<row id>."""

from django.urls import path

from bench.ceiling.views import CeilingView

urlpatterns = [path("ceiling/<int:pk>", CeilingView.as_view())]
