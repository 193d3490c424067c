"""Every prompt template in one place: the Alpaca template used by the paper for SFT, ranking and sampling,
chat templates (through the tokenizer), and a Gemma turn format for tokenizers that ship without one.

Judge and evaluation prompts live with their data (``tuna/feedback/judge.py`` holds the paper's ranking
prompt, ``evaluation/`` reads FastChat's reviewer prompts from the data files) because they are part of a
protocol, not of the student's input format.
"""

from __future__ import annotations

from typing import Any, Literal

TemplateName = Literal["alpaca", "chat", "raw"]

# Verbatim from the released code (PROMPT_DICT in tuna/src/train.py, Stanford Alpaca). The response is
# appended directly after "### Response:" with no newline, then the EOS token.
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)

# The Gemma-3 GGUF in the embedded default has no chat template; this is the standard Gemma turn format.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def alpaca_prompt(instruction: str, input: str = "") -> str:
    # Any non-empty input selects the input template, as the released code does (`input != ""`,
    # non_interactive_generate.py L54, train.py L149): a whitespace-only input is still an input.
    if input:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def parse_alpaca_prompt(prompt: str) -> tuple[str, str] | None:
    """``(instruction, input)`` of a prompt rendered with the Alpaca template, or None when ``prompt`` is not one.

    The released files store the rendered prompt (``instruct`` in gpt-4-ranking.json, ``instruction`` in the
    training files); this recovers its parts. The parse is accepted only if rendering the parts gives back
    ``prompt`` byte for byte."""
    for template in (ALPACA_PROMPT_INPUT, ALPACA_PROMPT_NO_INPUT):
        head, _, rest = template.partition("{instruction}")
        if not prompt.startswith(head):
            continue
        if "{input}" in rest:
            sep, _, tail = rest.partition("{input}")
            body = prompt[len(head):]
            if not body.endswith(tail) or sep not in body:
                continue
            instruction, _, inp = body[: len(body) - len(tail)].partition(sep)
        else:
            if not prompt.endswith(rest):
                continue
            instruction, inp = prompt[len(head) : len(prompt) - len(rest)], ""
        if alpaca_prompt(instruction, inp) == prompt:
            return instruction, inp
    return None


def user_message(instruction: str, input: str = "") -> str:
    """The instruction and its input as one chat turn."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction


def render_prompt(
    instruction: str,
    input: str = "",
    *,
    template: TemplateName = "alpaca",
    tokenizer: Any = None,
    system_prompt: str | None = None,
    prompt: str | None = None,
) -> str:
    """The text the model sees before its response. ``prompt`` (a pre-rendered prompt from a record) wins."""
    if prompt is not None:
        return prompt
    if template == "alpaca":
        return alpaca_prompt(instruction, input)
    if template == "raw":
        return user_message(instruction, input)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'chat' needs a tokenizer with a chat template (use template: alpaca)")
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": user_message(instruction, input)}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    raise ValueError(f"unknown template {template!r} (alpaca | chat | raw)")


def prompt_has_special_tokens(template: TemplateName) -> bool:
    """Chat templates write BOS/turn tokens themselves; the Alpaca template relies on the tokenizer's BOS."""
    return template == "chat"
