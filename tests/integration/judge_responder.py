"""A judge for the OpenAI-compatible test server: rates each answer from a hash of its text, so tests
can compute the expected ratings. Prompts containing GARBAGE-ONCE get one unreadable reply (the
repair request then succeeds); GARBAGE-ALWAYS never gets a readable one."""

from __future__ import annotations

import hashlib
import json
import re

from shared.contracts.events import Aspect

ANSWER = re.compile(r"\[Answer (\d+)\]\n(.*?)\n\[End of Answer \1\]", re.DOTALL)


def expected_rating(answer_text: str, aspect: Aspect) -> int:
    if aspect is Aspect.ETHICAL_CONSIDERATIONS:
        return 5
    digest = hashlib.sha256(f"{aspect.value}|{answer_text.strip()}".encode()).digest()
    return 1 + digest[0] % 5


def _text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


def prompt_text(messages: list[dict]) -> str:
    """The judge prompt a request carries: every message before the judge's first reply (the fixed
    system part, then the user part with the answers), as one text."""
    first_reply = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), len(messages))
    return "\n\n".join(_text_of(message) for message in messages[:first_reply])


def shown_answers(prompt: str) -> list[str]:
    """The answers a judge prompt shows, in the order shown."""
    return [text for _, text in ANSWER.findall(prompt)]


def asked_aspects(prompt: str) -> list[Aspect]:
    """The aspects a judge prompt asks to rate (all three, or one in per-aspect mode)."""
    task = prompt[prompt.index("# Reply format") :]
    return [a for a in Aspect if a.value in task.split("with a whole number")[0]]


def judge_responder(request: dict) -> str:
    messages = request["messages"]
    prompt = prompt_text(messages)
    is_repair = any(message.get("role") == "assistant" for message in messages)
    if "GARBAGE-ALWAYS" in prompt or ("GARBAGE-ONCE" in prompt and not is_repair):
        return "I would rather not rate these answers today."
    answers = shown_answers(prompt)
    aspects = asked_aspects(prompt)
    if request.get("response_format"):
        return json.dumps(
            {
                f"answer_{i + 1}": {
                    a.value: {"rating": expected_rating(t, a), "rationale": f"hash of {a.value}"}
                    for a in aspects
                }
                for i, t in enumerate(answers)
            }
        )
    lines = []
    for i, text in enumerate(answers, start=1):
        lines.append(f"## Answer {i}")
        for aspect in aspects:
            lines += [
                f"### {aspect.value}",
                f"Rating: {expected_rating(text, aspect)}",
                f"Rationale: hash rule for {i}.",
            ]
    return "\n".join(lines)
