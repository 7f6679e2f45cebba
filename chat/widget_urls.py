"""``/widget/<key>/…``: the embeddable widget (chat.widget)."""

from __future__ import annotations

from django.urls import path

from chat import widget

app_name = "widget"

urlpatterns = [
    path("<slug:key>/", widget.page, name="page"),
    path("<slug:key>/embed.js", widget.embed_js, name="embed"),
    path("<slug:key>/visitor/", widget.visitor, name="visitor"),
    path("<slug:key>/conversation/", widget.conversation, name="conversation"),
    path("<slug:key>/stream/", widget.stream, name="stream"),
    path("<slug:key>/attachments/", widget.attachment_upload, name="attachments"),
]
