"""Attachments over HTTP: the chat's upload endpoint and the files' one address, served only to
their owner and to viewers of their conversation's share link (``chat.attachments``)."""

from __future__ import annotations

from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from chat import attachments, selectors
from chat.http import error_response, invalid, signed_in
from chat.models import Attachment
from chat.relay.errors import EnvelopeError

# A served file is never run as a page of this site, whatever a browser makes of its bytes.
FILE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, max-age=3600",
    "X-Content-Type-Options": "nosniff",
}


@require_POST
@login_required
def attachment_upload(request: HttpRequest) -> JsonResponse:
    """``POST /chat/attachments/``, multipart with one ``file`` (and optionally ``slot``, the
    model picked, whose image side and document budget apply): 201 with the attachment
    (``attachments.describe``), or OpenAI's error envelope: 400 (no file, unreadable), 413
    (over a size limit or the user's quota), 415 (not an image, a PDF or a text file)."""
    user = signed_in(request.user)
    upload = request.FILES.get("file")
    try:
        if upload is None:
            raise invalid("Attach one file, as the form field 'file'.", param="file")
        slot = selectors.slot_get(name=request.POST.get("slot") or None, user=user)
        attachment = attachments.attachment_create(upload=upload, slot=slot, user=user)
    except EnvelopeError as exc:
        return error_response(exc)
    return JsonResponse(attachments.describe(attachment), status=201)


@require_GET
def attachment_file(request: HttpRequest, attachment_id: UUID) -> FileResponse:
    """``GET /chat/attachments/<id>/``: the stored file, to its owner, or to a signed-in viewer
    with ``?share=<the conversation's share id>``. Anyone else gets 404, as for an id that does
    not exist. Images are shown inline; documents are downloaded."""
    attachment = Attachment.objects.filter(pk=attachment_id).select_related("conversation").first()
    if attachment is None or not _may_see(request, attachment):
        raise Http404("No such file")
    image = attachment.kind == Attachment.Kind.IMAGE
    return FileResponse(
        attachment.file.open("rb"),
        content_type=attachment.mime,
        as_attachment=not image,
        filename=attachment.name,
        headers=FILE_HEADERS,
    )


@require_GET
def attachment_link(request: HttpRequest, token: str) -> HttpResponse:
    """``GET /chat/attachments/link/<token>/``: an image sent to a model server as a signed
    link (``Slot.image_links``), without signing in, at the side the token names, for as long
    as ``SLIPSTREAM_IMAGE_LINK_TTL_S``; 404 once expired, tampered with or deleted."""
    linked = attachments.image_from_link(token)
    if linked is None:
        raise Http404("No such image, or the link has expired")
    image, side = linked
    data, mime = attachments.image_bytes(image, side=side)
    return HttpResponse(
        data, content_type=mime, headers={**FILE_HEADERS, "Cache-Control": "no-store"}
    )


def _may_see(request: HttpRequest, attachment: Attachment) -> bool:
    user = request.user
    if not user.is_authenticated:
        return False
    if attachment.user_id is not None and attachment.user_id == user.pk:
        return True
    share = request.GET.get("share", "")
    conversation = attachment.conversation
    return (
        bool(share)
        and conversation is not None
        and conversation.share_id is not None
        and str(conversation.share_id) == share
    )
