from __future__ import annotations

from django.urls import path

from chat import attachment_views, conversation_views, views

app_name = "chat"

urlpatterns = [
    path("", views.index, name="index"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("sidebar/", conversation_views.sidebar, name="sidebar"),
    path("c/<uuid:conversation_id>/thread/", conversation_views.thread, name="thread"),
    path("c/<uuid:conversation_id>/tools/", conversation_views.tools, name="tools"),
    path("c/<uuid:conversation_id>/branch/", conversation_views.branch, name="branch"),
    path("c/<uuid:conversation_id>/rename/", conversation_views.rename, name="rename"),
    path("c/<uuid:conversation_id>/delete/", conversation_views.delete, name="delete"),
    path("c/<uuid:conversation_id>/organise/", conversation_views.organise, name="organise"),
    path("folders/<int:folder_id>/rename/", conversation_views.folder_rename, name="folder-rename"),
    path("folders/<int:folder_id>/delete/", conversation_views.folder_delete, name="folder-delete"),
    path(
        "c/<uuid:conversation_id>/settings/",
        conversation_views.settings_update,
        name="settings",
    ),
    path("c/<uuid:conversation_id>/share/", conversation_views.share, name="share"),
    path(
        "c/<uuid:conversation_id>/export.<str:fmt>",
        conversation_views.export,
        name="export",
    ),
    path("s/<uuid:share_id>/", conversation_views.shared, name="shared"),
    path("chat/stream/", views.stream, name="stream"),
    path("chat/attachments/", attachment_views.attachment_upload, name="attachments"),
    path(
        "chat/attachments/link/<str:token>/",
        attachment_views.attachment_link,
        name="attachment-link",
    ),
    path(
        "chat/attachments/<uuid:attachment_id>/",
        attachment_views.attachment_file,
        name="attachment",
    ),
    path("chat/slots/", views.slot_states, name="slot-states"),
    path("chat/generations/<str:generation_id>/", views.generation_events, name="generation"),
    path(
        "chat/generations/<str:generation_id>/stop/",
        views.generation_stop,
        name="generation-stop",
    ),
    path("settings/keys/", views.api_keys, name="api-keys"),
    path("settings/usage/", views.usage, name="usage"),
    path("chat/budget/", views.budget, name="budget"),
    path("settings/prompts/", views.prompts, name="prompts"),
    path("settings/prompts/<int:prompt_id>/edit/", views.prompt_edit, name="prompt-edit"),
    path("settings/prompts/<int:prompt_id>/delete/", views.prompt_delete, name="prompt-delete"),
    path("chat/prompts/", views.prompt_choices, name="prompt-choices"),
    path("settings/keys/<int:key_id>/revoke/", views.api_key_revoke, name="api-key-revoke"),
]
