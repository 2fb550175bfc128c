"""The JSON bodies of vLLM 0.32's OpenAI responses: completions, chat, usage and model lists.

One :class:`ResponseFormat` per request builds its streamed chunks (``start``, ``chunk``,
``usage_chunk``) or its whole body (``full``) from :class:`~modelfleet.engine.streaming.Delta`
values. Field order and the fields vLLM always sets (``null`` when unused) follow vLLM's
pydantic models, so a client that compares bodies field by field sees no difference:

- completions put ``prompt_token_ids`` (first chunk only) and ``token_ids`` in the choice;
- chat puts ``prompt_token_ids`` at the top level of the role chunk and ``token_ids`` in each
  choice; a continued final message answers with that message's role;
- the trailing usage chunk is serialised with ``exclude_none`` (so ``prompt_tokens_details``
  is absent unless ``--enable-prompt-tokens-details``), in-body usage keeps the ``null``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from modelfleet.engine.protocol import ChatCompletionRequest, CompletionRequest
from modelfleet.engine.streaming import Delta, RequestStream

__all__ = ["ChatFormat", "CompletionFormat", "ResponseFormat", "model_list", "usage"]


def usage(st: RequestStream, prompt_tokens_details: bool) -> dict[str, Any]:
    """vLLM's ``UsageInfo`` of one request so far."""
    n_prompt, n_out = len(st.prompt_ids), len(st.output_ids)
    details = {"cached_tokens": st.num_cached_tokens} if prompt_tokens_details else None
    return {
        "prompt_tokens": n_prompt,
        "total_tokens": n_prompt + n_out,
        "completion_tokens": n_out,
        "prompt_tokens_details": details,
    }


def model_list(names: tuple[str, ...], root: str, max_model_len: int) -> dict[str, Any]:
    """The body of ``GET /v1/models``."""
    created = int(time.time())
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": root,
            "parent": None,
            "max_model_len": max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for name in names
    ]
    return {"object": "list", "data": data}


class ResponseFormat:
    """Builds the JSON bodies of one request's response (streamed or whole)."""

    object_chunk = ""
    object_full = ""

    def __init__(
        self,
        response_id: str,
        model: str,
        req: CompletionRequest | ChatCompletionRequest,
        st: RequestStream,
        *,
        prompt_tokens_details: bool,
    ) -> None:
        self.id = response_id
        self.model = model
        self.req = req
        self.st = st
        self.details = prompt_tokens_details
        self.created = int(time.time())
        self.return_ids = bool(req.return_token_ids)
        self.first = True

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage(self) -> dict[str, Any]:
        return usage(self.st, self.details)

    def usage_chunk(self) -> dict[str, Any]:
        """The trailing usage chunk; vLLM serialises it with ``exclude_none``."""
        body = {k: v for k, v in self.usage().items() if v is not None}
        return {**self._head(self.object_chunk), "choices": [], "usage": body}

    def _maybe_usage(self, chunk: dict[str, Any]) -> dict[str, Any]:
        if self.req.continuous_usage:
            chunk["usage"] = self.usage()
        return chunk

    def start(self) -> list[dict[str, Any]]:
        return []

    def chunk(self, d: Delta) -> dict[str, Any]:
        raise NotImplementedError

    def full(self, deltas: list[Delta]) -> dict[str, Any]:
        raise NotImplementedError


class CompletionFormat(ResponseFormat):
    object_chunk = "text_completion"
    object_full = "text_completion"

    def chunk(self, d: Delta) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "text": d.text,
            "logprobs": None,
            "finish_reason": d.finish_reason,
            "stop_reason": d.stop_reason,
        }
        # vLLM sets both fields explicitly, so they are present (null) even when not asked for.
        choice["prompt_token_ids"] = self.st.prompt_ids if self.first and self.return_ids else None
        choice["token_ids"] = d.token_ids if self.return_ids else None
        self.first = False
        return self._maybe_usage({**self._head(self.object_chunk), "choices": [choice]})

    def full(self, deltas: list[Delta]) -> dict[str, Any]:
        last = deltas[-1]
        return {
            **self._head(self.object_full),
            "choices": [
                {
                    "index": 0,
                    "text": "".join(d.text for d in deltas),
                    "logprobs": None,
                    "finish_reason": last.finish_reason,
                    "stop_reason": last.stop_reason,
                    "token_ids": list(self.st.output_ids) if self.return_ids else None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": self.st.prompt_ids if self.return_ids else None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(),
            "kv_transfer_params": None,
        }


class ChatFormat(ResponseFormat):
    object_chunk = "chat.completion.chunk"
    object_full = "chat.completion"

    @property
    def role(self) -> str:
        """vLLM's response role: the assistant, or the last message's role when continuing."""
        req = self.req
        if isinstance(req, ChatCompletionRequest) and not req.add_generation_prompt:
            return req.messages[-1].role
        return "assistant"

    def start(self) -> list[dict[str, Any]]:
        chunk: dict[str, Any] = {
            **self._head(self.object_chunk),
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": self.role, "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
        chunk["prompt_token_ids"] = self.st.prompt_ids if self.return_ids else None
        chunk["prompt_text"] = None
        return [self._maybe_usage(chunk)]

    def chunk(self, d: Delta) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"content": d.text},
            "logprobs": None,
            "finish_reason": d.finish_reason,
        }
        if d.finish_reason is not None:
            choice["stop_reason"] = d.stop_reason
        choice["token_ids"] = d.token_ids if self.return_ids else None
        return self._maybe_usage({**self._head(self.object_chunk), "choices": [choice]})

    def full(self, deltas: list[Delta]) -> dict[str, Any]:
        last = deltas[-1]
        return {
            **self._head(self.object_full),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": self.role,
                        "content": "".join(d.text for d in deltas),
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": last.finish_reason,
                    "stop_reason": last.stop_reason,
                    "token_ids": list(self.st.output_ids) if self.return_ids else None,
                }
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": self.usage(),
            "prompt_logprobs": None,
            "prompt_token_ids": self.st.prompt_ids if self.return_ids else None,
            "kv_transfer_params": None,
        }
