from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from chat import csp, ops, sso_session
from chat.api import common, completions, embeddings, model_list, responses

urlpatterns = [
    path("admin/", admin.site.urls),
    path("login/", sso_session.SignIn.as_view(), name="login"),
    path("logout/", sso_session.SignOut.as_view(), name="logout"),
    *([path("oidc/", include("mozilla_django_oidc.urls"))] if settings.SSO_ENABLED else []),
    path("csp-report/", csp.report, name="csp-report"),
    # Browsers ask for it where a page names no icon (a JSON page, a file): no 404 in the log.
    path("favicon.ico", RedirectView.as_view(url=static("chat/favicon.svg"), permanent=True)),
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("metrics", ops.prometheus, name="metrics"),
    path("v1/models", model_list.models, name="api-models"),
    path("v1/models/<str:model>", model_list.models, name="api-model"),
    path("v1/chat/completions", completions.chat_completions, name="api-chat-completions"),
    path("v1/completions", completions.completions, name="api-completions"),
    path("v1/responses", responses.create_response, name="api-responses"),
    path("v1/responses/<str:response_id>", responses.response_detail, name="api-response"),
    path(
        "v1/responses/<str:response_id>/input_items",
        responses.response_input_items,
        name="api-response-input-items",
    ),
    path(
        "v1/responses/<str:response_id>/cancel",
        responses.cancel_response,
        name="api-response-cancel",
    ),
    path("v1/embeddings", embeddings.embeddings, name="api-embeddings"),
    # Everything else under /v1: OpenAI's "Invalid URL" 404 envelope, never an HTML page.
    re_path(r"^v1(?:/|$)", common.unknown_url, name="api-unknown-url"),
    path("widget/", include("chat.widget_urls")),
    path("", include("chat.urls")),
]

# JSON for /v1 and the browser's JSON endpoints when a failure happens outside a view.
handler400 = "chat.middleware.bad_request"
handler500 = "chat.middleware.server_error"
