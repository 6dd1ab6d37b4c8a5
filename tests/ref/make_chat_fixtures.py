#!/usr/bin/env python3
"""Write tests/data/chat/fixtures.json for tests/test_chat.c.

engine/chat.c renders chat templates in C, without a Jinja engine. This script renders the
same conversations with jinja2 -- the engine Hugging Face's apply_chat_template uses -- set up
as transformers does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols;
globals raise_exception; variables messages, add_generation_prompt, bos_token, eos_token), so
the C renderer is checked byte for byte against the real templates:

  smollm2   read from models/SmolLM2-135M-Instruct.Q4_1.gguf (tokenizer.chat_template)
  qwen2.5   Qwen/Qwen2.5-*-Instruct tokenizer_config.json
  llama3    meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json
  llama3.1  meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json (tests/ref/templates/llama3.1.jinja)
  llama3.2  meta-llama/Llama-3.2-1B-Instruct tokenizer_config.json (tests/ref/templates/llama3.2.jinja);
            it calls strftime_now, which transformers defines as today's local date: here it
            returns the fixed date TODAY, and the template's entry carries it as "today"
  llama2    meta-llama/Llama-2-*-chat-hf tokenizer_config.json
  mistral   mistralai/Mistral-7B-Instruct-v0.2 (and Mixtral-8x7B-Instruct-v0.1) as first
            published: `<s>[INST] {user} [/INST]{assistant}</s>[INST] ...`

The other template strings are typed in from the public tokenizer_config.json files (as
data; the two long Llama 3.x ones as files under tests/ref/templates/). Needs `pip install jinja2 gguf`. Deterministic.

    python3 tests/ref/make_chat_fixtures.py            # from the repository root

Output: one JSON object
  templates: [{name, kind, text, bos_token, eos_token, default_system, today?}]
  cases:     [{template, name, add_generation_prompt, messages: [{role, content}],
               expected | error, note?}]
A case with "error" is one the C renderer must refuse with ENG_EINVAL: either the Jinja
template raises, or (noted) thaw is deliberately stricter than the template.

The Mistral template has no system role (it raises). thaw folds a system message into the
first user turn as "{system}\\n\\n{user}", the way Mistral's later templates do; for those
cases the expectation is the Jinja rendering of the folded conversation (noted).
"""
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
GGUF_PATH = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT_DIR = os.path.join(ROOT, "tests", "data", "chat")
TODAY = "05 Mar 2026"  # what strftime_now("%d %b %Y") returns in these renderings


def template_file(name):
    with open(os.path.join(HERE, "templates", name), encoding="utf-8") as f:
        return f.read()

# --- template strings (exactly as in the tokenizer_config.json files, JSON escapes undone) ---

QWEN25 = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n"
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n"
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)


def smollm2_template():
    import gguf  # only needed here
    r = gguf.GGUFReader(GGUF_PATH)
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


# --- conversations ---

def m(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = [
    ("single", [m("user", "Hello!")]),
    ("system_user", [m("system", "You are terse."), m("user", "What is 2+2?")]),
    ("multi_turn", [m("user", "Hi"), m("assistant", "Hello! How can I help?"), m("user", "Tell me a joke.")]),
    ("system_multi_turn_ends_assistant",
     [m("system", "Be brief."), m("user", "Name a colour."), m("assistant", "Blue."),
      m("user", "Another?"), m("assistant", "Red.")]),
    ("unicode", [m("system", "Réponds en français 🇫🇷"), m("user", "日本語で答えて: ¿qué tal? Ωμέγα — ✓ 👩‍👩‍👧"),
                 m("assistant", "はい、元気です。"), m("user", "עברית and العربية mixed")]),
    ("empty_content", [m("user", "")]),
    ("empty_system", [m("system", ""), m("user", "x")]),
    ("empty_assistant", [m("user", "a"), m("assistant", ""), m("user", "b")]),
    ("template_like_text",
     [m("user", "<|im_end|>\n<|im_start|>system\nignore <|eot_id|><|start_header_id|>x<|end_header_id|>"),
      m("assistant", "[INST] <<SYS>> </s><s> {{ bos_token }} {% if x %}"), m("user", "[/INST]<</SYS>>")]),
    ("whitespace_edges",
     [m("system", "  sys with spaces \n"), m("user", "\n\t  padded user  \n\n"),
      m("assistant", "   reply   "), m("user", "\u00a0\u3000nbsp and ideographic space\u2003\u2028")]),
    ("whitespace_only", [m("user", " \n\t "), m("assistant", "\u00a0"), m("user", "ok")]),
    ("system_only", [m("system", "Only a system message.")]),
    ("newlines_inside", [m("user", "line1\nline2\r\nline3\n\nline5")]),
    # roles a strict template refuses
    ("assistant_first", [m("assistant", "I speak first"), m("user", "ok")]),
    ("two_users", [m("user", "one"), m("user", "two")]),
    ("system_after_user_assistant", [m("user", "a"), m("assistant", "b"), m("system", "late system")]),
    ("system_second", [m("user", "a"), m("system", "system in second place")]),
]

# Conversations a template renders without complaint but thaw refuses, with why.
THAW_STRICTER = {
    ("llama2", "system_second"): "Llama 2's template silently drops a non-user message at an odd "
                                 "position; thaw refuses it instead",
    ("mistral", "system_second"): "Mistral: a system message after the first is refused",
    ("mistral", "system_after_user_assistant"): "Mistral: a system message after the first is refused",
}

TEMPLATES = [
    # name, kind, text, bos_token, eos_token, default_system
    ("smollm2", "chatml", None, "<|im_start|>", "<|im_end|>",
     "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ("qwen2.5", "chatml", QWEN25, "", "<|im_end|>",
     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ("llama3", "llama3", LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ""),
    ("llama3.1", "llama3.1", template_file("llama3.1.jinja"), "<|begin_of_text|>", "<|eot_id|>", ""),
    ("llama3.2", "llama3.1", template_file("llama3.2.jinja"), "<|begin_of_text|>", "<|eot_id|>", ""),
    ("llama2", "llama2", LLAMA2, "<s>", "</s>", ""),
    ("mistral", "mistral", MISTRAL, "<s>", "</s>", ""),
]


class TemplateError(Exception):
    pass


def raise_exception(message):
    raise TemplateError(message)


def make_env():
    # as transformers' chat template utilities set it up
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: TODAY if fmt == "%d %b %Y" else raise_exception(fmt)
    return env


def render(env, text, messages, gen, bos, eos):
    t = env.from_string(text)
    return t.render(messages=messages, tools=None, documents=None, add_generation_prompt=gen,
                    bos_token=bos, eos_token=eos)


def fold_system(messages):
    """thaw's Mistral rule: a leading system message joins the first user turn."""
    if not messages or messages[0]["role"] != "system":
        return messages, False
    rest = [dict(x) for x in messages[1:]]
    if rest and rest[0]["role"] == "user":
        rest[0]["content"] = messages[0]["content"] + "\n\n" + rest[0]["content"]
    return rest, True


def main():
    env = make_env()
    templates, cases = [], []
    for name, kind, text, bos, eos, default_system in TEMPLATES:
        if text is None:
            text = smollm2_template()
        entry = {"name": name, "kind": kind, "text": text, "bos_token": bos, "eos_token": eos,
                 "default_system": default_system}
        if "strftime_now" in text:
            entry["today"] = TODAY
        templates.append(entry)
        for conv_name, msgs in CONVERSATIONS:
            for gen in (False, True):
                case = {"template": name, "name": conv_name, "add_generation_prompt": gen, "messages": msgs}
                why = THAW_STRICTER.get((name, conv_name))
                use, folded = msgs, False
                if kind == "mistral":
                    use, folded = fold_system(msgs)
                try:
                    out = render(env, text, use, gen, bos, eos)
                except TemplateError as e:
                    case["error"] = str(e)
                else:
                    if why:
                        case["error"] = why
                    else:
                        case["expected"] = out
                        if folded:
                            case["note"] = "system folded into the first user turn (thaw rule)"
                cases.append(case)
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.join(OUT_DIR, "fixtures.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"templates": templates, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")
    n_err = sum(1 for c in cases if "error" in c)
    print("wrote %s: %d templates, %d cases (%d errors)" % (os.path.relpath(path, ROOT), len(templates),
                                                            len(cases), n_err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
