"""Forms for what people edit in the chat: a conversation's settings."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.validators import MaxValueValidator, MinValueValidator

from chat.models import Conversation


class ConversationSettingsForm(forms.ModelForm[Conversation]):
    """A conversation's system prompt, temperature and max tokens; blank fields mean the slot's
    own defaults. (Its slot is the chat header's picker.)"""

    class Meta:
        model = Conversation
        fields = ("system_prompt", "temperature", "max_tokens")
        widgets = {"system_prompt": forms.Textarea(attrs={"rows": 3})}
        labels = {"max_tokens": "Max tokens"}
        help_texts = {
            "system_prompt": "Replaces the model's own system prompt in this conversation.",
            "temperature": "0 to 2; blank: the model's default.",
            "max_tokens": "Longest answer, in tokens; blank: the model's default.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["temperature"].validators += [MinValueValidator(0.0), MaxValueValidator(2.0)]
        self.fields["max_tokens"].validators.append(MinValueValidator(1))
