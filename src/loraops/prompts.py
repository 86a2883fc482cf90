"""The prompt format shared by training, serving and evaluation.

Training data is Axolotl ``type: alpaca``; Axolotl's AlpacaPrompter (prompt_style "instruct") wraps
each example as below. Evaluation sends exactly these strings to the completions endpoint, and the
base model's chat template renders a single user turn to the same no-input string, so that an
application calling ``chat.completions`` by the stable model name gets the prompt the adapter saw.
"""

from __future__ import annotations

SYSTEM_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
SYSTEM_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request."
)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The exact text Axolotl's alpaca prompter puts before the response."""
    if input_text:
        return (
            f"{SYSTEM_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n"
            f"### Input:\n{input_text}\n\n### Response:\n"
        )
    return f"{SYSTEM_NO_INPUT}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


# Jinja chat template (Hugging Face convention) rendering the last user message as an alpaca
# no-input prompt. A system message, if given, replaces the default preamble.
CHAT_TEMPLATE = (
    "{%- set system = namespace(text='" + SYSTEM_NO_INPUT + "') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set system.text = message['content'] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{{- system.text + '\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '### Instruction:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '### Response:\\n' + message['content'] + eos_token + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Response:\\n' -}}{%- endif -%}"
)
