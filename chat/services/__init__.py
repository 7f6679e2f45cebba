"""Writes. Persistence never writes per token: an answer costs one insert when it starts and
one update when it ends (DESIGN.md, "Persistence"). One module per subject; every write is
importable from here (``services.message_afinalise``).

- ``messages``: answers and their turns, checkpoints, ends, recoveries, a slot's state.
- ``keys``: the ``/v1`` API's keys and calls, a slot's image side, the audit log.
- ``library``: conversations organised, deleted and shared; prompts and folders.
- ``responses``: stored ``/v1/responses``.
- ``usage``: usage per day and per hour.
"""

from __future__ import annotations

from chat.services.keys import (
    LAST_USED_RESOLUTION,
    api_call_arecord,
    api_conversation_astore,
    api_key_create,
    api_key_revoke,
    audit_log,
    slot_detect_images,
)
from chat.services.library import (
    FOLDER_NAME_MAX,
    PROMPT_TEXT_MAX,
    PROMPT_TITLE_MAX,
    attachment_files_delete,
    conversation_delete,
    conversation_organise,
    conversation_rename,
    conversation_share,
    folder_delete,
    folder_get_or_create,
    folder_rename,
    prompt_create,
    prompt_update,
)
from chat.services.messages import (
    FINISH_REASON_LENGTH,
    TITLE_LENGTH,
    conversation_new,
    conversation_new_for_visitor,
    conversation_set_leaf,
    generation_fields,
    message_acheckpoint,
    message_acreate_user,
    message_afinalise,
    message_amark_interrupted,
    message_arecover,
    message_new_user,
    resume_delta,
    resume_point,
    slot_astore_state,
    title_from,
    turn_acreate,
    turn_create,
    whole_answer_fields,
)
from chat.services.responses import (
    backend_anote_responses_api,
    pack_chunks,
    response_acreate,
    response_adelete,
    response_afinalise,
    response_amark_cancelled,
    unpack_chunks,
)
from chat.services.usage import usage_arecord, usage_hour_aprune, usage_today

__all__ = [
    "FINISH_REASON_LENGTH",
    "FOLDER_NAME_MAX",
    "LAST_USED_RESOLUTION",
    "PROMPT_TEXT_MAX",
    "PROMPT_TITLE_MAX",
    "TITLE_LENGTH",
    "api_call_arecord",
    "api_conversation_astore",
    "api_key_create",
    "api_key_revoke",
    "attachment_files_delete",
    "audit_log",
    "backend_anote_responses_api",
    "conversation_delete",
    "conversation_new",
    "conversation_new_for_visitor",
    "conversation_organise",
    "conversation_rename",
    "conversation_set_leaf",
    "conversation_share",
    "folder_delete",
    "folder_get_or_create",
    "folder_rename",
    "generation_fields",
    "message_acheckpoint",
    "message_acreate_user",
    "message_afinalise",
    "message_amark_interrupted",
    "message_arecover",
    "message_new_user",
    "pack_chunks",
    "prompt_create",
    "prompt_update",
    "response_acreate",
    "response_adelete",
    "response_afinalise",
    "response_amark_cancelled",
    "resume_delta",
    "resume_point",
    "slot_astore_state",
    "slot_detect_images",
    "title_from",
    "turn_acreate",
    "turn_create",
    "unpack_chunks",
    "usage_arecord",
    "usage_hour_aprune",
    "usage_today",
    "whole_answer_fields",
]
