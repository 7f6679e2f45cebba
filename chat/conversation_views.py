"""Managing conversations from the chat: branches, rename, delete, settings, sharing, export.

Every view finds the conversation through ``selectors.conversation_get(user=…)``: another
user's conversation answers 404, as a missing one does. Views answer htmx requests with the
partial they replace, and plain requests with a redirect.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_POST

from chat import exports, selectors, services
from chat.forms import ConversationSettingsForm
from chat.http import error_response, invalid, signed_in
from chat.models import Conversation, Folder


def _own(request: HttpRequest, conversation_id: UUID) -> Conversation:
    conversation = selectors.conversation_get(
        user=signed_in(request.user), conversation_id=conversation_id
    )
    if conversation is None:
        raise Http404("No such conversation")
    return conversation


def sidebar_context(request: HttpRequest, *, current_id: str = "") -> dict[str, object]:
    """What ``chat/_sidebar.html`` needs: conversations under their headings (pinned,
    folders, dates), the search, and the user's folders; ``?archived=1`` lists the archived
    conversations instead."""
    user = signed_in(request.user)
    query = request.GET.get(SEARCH, "")[:200]
    archived = request.GET.get(ARCHIVED) == "1"
    conversations = selectors.conversation_list(user=user, query=query, archived=archived)
    folders = selectors.folder_list(user=user)
    if archived:
        groups = [selectors.SidebarGroup("Archived", list(conversations[:200]))]
    else:
        groups = selectors.conversation_groups(
            conversations[:200], today=timezone.localdate(), folders=[] if query else folders
        )
    return {
        "groups": groups,
        "folders": folders,
        "current_id": current_id,
        "query": query,
        "archived": archived,
    }


# The sidebar's query parameters: the search, and the archived list instead of the others.
SEARCH, ARCHIVED = "q", "archived"


@require_GET
@login_required
def sidebar(request: HttpRequest) -> HttpResponse:
    """The conversation list (an htmx partial): ``?q=`` searches titles and message text,
    ``?current=`` marks the open conversation."""
    return render(
        request,
        "chat/_sidebar.html",
        sidebar_context(request, current_id=request.GET.get("current", "")),
    )


@require_GET
@login_required
def thread(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """The shown thread (partial), to refresh pagers after an edit or a regenerate."""
    conversation = _own(request, conversation_id)
    return render(
        request,
        "chat/_thread.html",
        {"chat_messages": selectors.message_list(conversation=conversation)},
    )


@require_GET
@login_required
def tools(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """The header's settings and sharing (partial), for a conversation the chat's first
    message just made (the page was rendered before it existed)."""
    conversation = _own(request, conversation_id)
    return render(
        request,
        "chat/_tools.html",
        {
            "conversation": conversation,
            "settings_form": ConversationSettingsForm(instance=conversation),
        },
    )


@require_POST
@login_required
def branch(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """Show another branch: POST ``message`` (a sibling's id from the < 1/2 > pager). Answers
    with the thread partial."""
    conversation = _own(request, conversation_id)
    try:
        message = conversation.messages.get(pk=int(request.POST.get("message", "")))
    except (ValueError, conversation.messages.model.DoesNotExist) as exc:
        raise Http404("No such message") from exc
    services.conversation_set_leaf(conversation=conversation, leaf=message)
    return render(
        request,
        "chat/_thread.html",
        {"chat_messages": selectors.message_list(conversation=conversation)},
    )


@require_POST
@login_required
def rename(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    conversation = _own(request, conversation_id)
    services.conversation_rename(conversation=conversation, title=request.POST.get("title", ""))
    return _sidebar_or(request, conversation)


@require_POST
@login_required
def organise(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """Pin, unpin, archive, unarchive or move a conversation: POST ``action`` (``pin``,
    ``unpin``, ``archive``, ``unarchive``, ``move``) and, to move, ``folder`` (a folder's id,
    or empty for none) or ``new_folder`` (a name). Answers with the sidebar (htmx) or a
    redirect to the conversation; 400 for an unknown action or folder."""
    user = signed_in(request.user)
    conversation = _own(request, conversation_id)
    action = request.POST.get("action", "")
    if action in ("pin", "unpin"):
        services.conversation_organise(conversation=conversation, pinned=action == "pin")
    elif action in ("archive", "unarchive"):
        services.conversation_organise(conversation=conversation, archived=action == "archive")
    elif action == "move":
        folder = _folder_of(request, user)
        if isinstance(folder, HttpResponse):
            return folder
        services.conversation_organise(conversation=conversation, folder=folder)
    else:
        return error_response(invalid("Unknown action.", param="action"))
    return _sidebar_or(request, conversation)


def _folder_of(request: HttpRequest, user: Any) -> Folder | HttpResponse | None:
    """The folder a move names: a new one by name, one of the user's by id, or none; a 400
    response for another user's or an unknown id."""
    new_name = request.POST.get("new_folder", "").strip()
    if new_name:
        try:
            return services.folder_get_or_create(user=user, name=new_name)
        except ValueError as exc:
            return error_response(invalid(str(exc), param="new_folder"))
    folder_id = request.POST.get("folder", "")
    if not folder_id:
        return None
    folder = Folder.objects.filter(user=user, pk=folder_id).first() if folder_id.isdigit() else None
    if folder is None:
        return error_response(invalid("Unknown folder.", param="folder"))
    return folder


@require_POST
@login_required
def folder_rename(request: HttpRequest, folder_id: int) -> HttpResponse:
    """Rename one of the user's folders: POST ``name``. Answers with the sidebar (htmx) or a
    redirect to the chat; an empty name, one over ``services.FOLDER_NAME_MAX`` characters or
    the name of another of the user's folders is a 400 (the error envelope, param ``name``),
    another user's folder a 404."""
    folder = selectors.folder_get(user=signed_in(request.user), folder_id=folder_id)
    if folder is None:
        raise Http404("No such folder")
    try:
        services.folder_rename(folder=folder, name=request.POST.get("name", ""))
    except ValueError as exc:
        return error_response(invalid(str(exc), param="name"))
    if request.htmx:  # type: ignore[attr-defined]
        # The form sends the open conversation (``current``), for the sidebar to mark it.
        current_id = request.POST.get("current", "")
        return render(
            request, "chat/_sidebar.html", sidebar_context(request, current_id=current_id)
        )
    return redirect("chat:index")


@require_POST
@login_required
def folder_delete(request: HttpRequest, folder_id: int) -> HttpResponse:
    """Delete one of the user's folders (its conversations stay, in no folder)."""
    folder = selectors.folder_get(user=signed_in(request.user), folder_id=folder_id)
    if folder is None:
        raise Http404("No such folder")
    services.folder_delete(folder=folder)
    if request.htmx:  # type: ignore[attr-defined]
        return render(request, "chat/_sidebar.html", sidebar_context(request))
    return redirect("chat:index")


def _sidebar_or(request: HttpRequest, conversation: Conversation) -> HttpResponse:
    """The sidebar for htmx, marking ``conversation``; else a redirect to it."""
    if request.htmx:  # type: ignore[attr-defined]
        return render(
            request, "chat/_sidebar.html", sidebar_context(request, current_id=str(conversation.pk))
        )
    return redirect("chat:conversation", conversation.pk)


@require_POST
@login_required
def delete(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """Delete a conversation and its messages (the page asks for confirmation first)."""
    conversation = _own(request, conversation_id)
    services.conversation_delete(conversation=conversation)
    if request.htmx:  # type: ignore[attr-defined]
        response = HttpResponse(status=204)
        response["HX-Redirect"] = reverse("chat:index")
        return response
    return redirect("chat:index")


@require_POST
@login_required
def settings_update(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """Save the conversation's system prompt, temperature and max tokens. Answers with
    the settings form partial, showing errors if any (status 400)."""
    conversation = _own(request, conversation_id)
    form = ConversationSettingsForm(request.POST, instance=conversation)
    saved = form.is_valid()
    if saved:
        form.save()
    return render(
        request,
        "chat/_settings.html",
        {"conversation": conversation, "settings_form": form, "saved": saved},
        status=200 if saved else 400,
    )


@require_POST
@login_required
def share(request: HttpRequest, conversation_id: UUID) -> HttpResponse:
    """Share (``shared=on``) or stop sharing; answers with the share partial."""
    conversation = _own(request, conversation_id)
    services.conversation_share(
        conversation=conversation, shared=request.POST.get("shared") == "on"
    )
    return render(request, "chat/_share.html", {"conversation": conversation})


@require_GET
@login_required
def shared(request: HttpRequest, share_id: UUID) -> HttpResponse:
    """A conversation someone shares, read-only, for any signed-in member."""
    conversation = selectors.conversation_get_shared(share_id=share_id)
    if conversation is None:
        raise Http404("This conversation is not shared (any more).")
    return render(
        request,
        "chat/shared.html",
        {
            "conversation": conversation,
            "chat_messages": selectors.message_list(conversation=conversation),
        },
    )


@require_GET
@login_required
def export(request: HttpRequest, conversation_id: UUID, fmt: str) -> HttpResponse:
    """Download the shown thread as Markdown (``md``) or JSON (``json``)."""
    if fmt not in ("md", "json"):
        raise Http404("Export as .md or .json")
    conversation = _own(request, conversation_id)
    thread = selectors.message_thread(conversation=conversation)
    name = slugify(str(conversation))[:60] or "conversation"
    files = {str(a.pk): a for a in conversation.attachments.all()}
    base_url = request.build_absolute_uri("/").rstrip("/")
    if fmt == "json":
        exported = exports.as_json(
            conversation=conversation, thread=thread, attachments=files, base_url=base_url
        )
        body = json.dumps(exported, indent=2, ensure_ascii=False)
        content_type = "application/json"
    else:
        body = exports.as_markdown(
            conversation=conversation, thread=thread, attachments=files, base_url=base_url
        )
        content_type = "text/markdown; charset=utf-8"
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{name}.{fmt}"'
    return response
