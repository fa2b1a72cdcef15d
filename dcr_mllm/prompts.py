"""LLaVA-1.5's prompt strings, defined once for training, the exported chat template, convert-llava and the tiny tokenizer.

They are those of ``conv_vicuna_v1`` and ``conv_llava_plain`` in LLaVA's ``llava/conversation.py``
(haotian-liu/LLaVA, lines 242-252 and 291-299): LLaVA-1.5 trains and evaluates with them, and
lmms-eval's ``llava_hf`` falls back to the same vicuna_v1 strings.
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
VICUNA_ROLES = ("USER", "ASSISTANT")
VICUNA_SEP = " "  # after the system prompt and after each question
VICUNA_SEP2 = "</s>"  # after each answer
PLAIN_SEP = "\n"  # pretraining: "<image>" + caption + "\n"
# LLaVA-1.5's short-answer instructions, appended to a question (its VQA/yes-no and multiple-choice
# data; the same post_prompts as the local mmvp/pope tasks' YAMLs)
SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
CHOICE_PROMPT = "\nAnswer with the option's letter from the given choices directly."

# vicuna_v1 as a chat template: "{system} USER: <image>\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT:" (a
# question follows the system prompt after VICUNA_SEP, an answer's "</s>" directly, as get_prompt joins them)
VICUNA_CHAT_TEMPLATE = (
    "{% set ns = namespace(system='" + VICUNA_SYSTEM.replace("'", "\\'") + "', sep='" + VICUNA_SEP + "') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{% set ns.system = message['content'] if message['content'] is string else message['content'][0]['text'] %}"
    "{% endif %}{% endfor %}"
    "{{ ns.system }}"
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}{{ ns.sep + '" + VICUNA_ROLES[0] + ": ' }}"
    "{% else %}{{ '" + VICUNA_SEP + VICUNA_ROLES[1] + ": ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ '"
    + VICUNA_SEP2
    + "' }}{% set ns.sep = '' %}{% else %}{% set ns.sep = '"
    + VICUNA_SEP
    + "' %}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + VICUNA_SEP + VICUNA_ROLES[1] + ":' }}{% endif %}"
)
