"""The chat formats a recipe can name (`chat_template: chatml`), as mergekit's recipes do.

Published recipes name a format instead of pasting its Jinja. Each entry renders the format its
model family documents; `chatml`, `llama3` and `mistral` render exactly what mergekit's templates
of those names render. For `alpaca` and `exaone`, mergekit's templates leave their own indentation
and blank lines in the prompt; these render the formats themselves (the section layout of Alpaca,
EXAONE 3's turn markers). Templates are written without surrounding whitespace, so they render
the same with or without the `trim_blocks` setting of the Jinja environment.
"""

from __future__ import annotations

NAMED: dict[str, str] = {
    # <|im_start|>ROLE\nCONTENT<|im_end|>\n per message
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    # BOS once, then a header per message and the trimmed content closed by <|eot_id|>
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        " + message['content'] | trim + '<|eot_id|>\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    # [INST] user [/INST] answer</s>, alternating; an opening system message joins the first turn
    "mistral": (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
        "{% else %}{% set turns = messages %}{% endif %}"
        "{{ bos_token }}"
        "{% for message in turns %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('mistral chat format: after an optional system message, roles must alternate"
        " user/assistant') }}"
        "{% endif %}"
        "{% if message['role'] == 'user' and loop.first and system is defined %}"
        "{{ ' [INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'user' %}"
        "{{ ' [INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'] + eos_token }}"
        "{% else %}"
        "{{ raise_exception('mistral chat format: only user and assistant messages, after an optional"
        " system message') }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    # the last system message, then ### Instruction / ### Input / ### Response sections a blank
    # line apart; `user_context` messages are the Input section
    "alpaca": (
        "{% set sections = {'user': '### Instruction:', 'user_context': '### Input:',"
        " 'assistant': '### Response:'} %}"
        "{% set system = messages | selectattr('role', 'equalto', 'system') | list %}"
        "{% set ns = namespace(parts=[system[-1]['content'] | trim] if system else []) %}"
        "{% for message in messages if message['role'] in sections %}"
        "{% set ns.parts = ns.parts + [sections[message['role']] + '\\n' + message['content'] | trim] %}"
        "{% endfor %}"
        "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
        "{% set ns.parts = ns.parts + ['### Response:\\n'] %}"
        "{% endif %}"
        "{{ ns.parts | join('\\n\\n') }}"
    ),
    # [|ROLE|]CONTENT, closed by [|endofturn|] except after the user; an empty system turn first
    "exaone": (
        "{% if messages[0]['role'] != 'system' %}{{ '[|system|][|endofturn|]\\n' }}{% endif %}"
        "{% for message in messages %}"
        "{{ '[|' + message['role'] + '|]' + message['content'] }}"
        "{{ '\\n' if message['role'] == 'user' else '[|endofturn|]\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
}


def chat_template_text(value: str | None) -> str | None:
    """The Jinja a recipe's `chat_template` stands for: a named format's, else the value itself
    (a Jinja string, `auto`, or None), checked to be one of these."""
    if value is None or value == "auto":
        return value
    if value in NAMED:
        return NAMED[value]
    if len(value) < 20 or "{" not in value:
        raise ValueError(f"{value!r} is neither `auto`, a named format ({', '.join(NAMED)}) nor a Jinja template")
    return value
