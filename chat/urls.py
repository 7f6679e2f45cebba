from __future__ import annotations

from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("sidebar/", views.sidebar, name="sidebar"),
    path("chat/stream/", views.stream, name="stream"),
    path("chat/slots/", views.slot_states, name="slot-states"),
    path("chat/generations/<str:generation_id>/", views.generation_events, name="generation"),
    path(
        "chat/generations/<str:generation_id>/stop/",
        views.generation_stop,
        name="generation-stop",
    ),
    path("settings/keys/", views.api_keys, name="api-keys"),
    path("settings/keys/<int:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
]
