"""The named chat formats render the prompts their model families document (hand-written here;
chatml, llama3 and mistral also equal mergekit's templates of those names on these messages)."""

import pytest
from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from evo_merge.merge.chat_templates import NAMED, chat_template_text

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": " and 3+3? "}]
EXPECTED = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n and 3+3? <|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\n"
              "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>\n"
              "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>\n"
              "<|start_header_id|>user<|end_header_id|>\n\nand 3+3?<|eot_id|>\n"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s> [INST] Be brief.\n\n2+2? [/INST] 4</s> [INST]  and 3+3?  [/INST]",
    "alpaca": "Be brief.\n\n### Instruction:\n2+2?\n\n### Response:\n4\n\n### Instruction:\nand 3+3?\n\n"
              "### Response:\n",
    "exaone": "[|system|]Be brief.[|endofturn|]\n[|user|]2+2?\n[|assistant|]4[|endofturn|]\n"
              "[|user|] and 3+3? \n[|assistant|]",
}


def render(name, messages, generation_prompt=True):
    return render_jinja_template(conversations=[messages], chat_template=NAMED[name], bos_token="<s>",
                                 eos_token="</s>", add_generation_prompt=generation_prompt)[0][0]


@pytest.mark.parametrize("name", sorted(NAMED))
def test_each_named_format_renders_its_documented_prompt(name):
    assert set(EXPECTED) == set(NAMED)
    assert render(name, CHAT) == EXPECTED[name]


def test_formats_without_a_system_message_and_with_an_input_section():
    user = [{"role": "user", "content": "hi"}]
    assert render("exaone", user, False) == "[|system|][|endofturn|]\n[|user|]hi\n"
    assert render("alpaca", user) == "### Instruction:\nhi\n\n### Response:\n"
    context = [{"role": "user", "content": "Sum these."}, {"role": "user_context", "content": "1 2"}]
    assert render("alpaca", context) == "### Instruction:\nSum these.\n\n### Input:\n1 2\n\n### Response:\n"
    assert render("mistral", user) == "<s> [INST] hi [/INST]"


def test_mistral_refuses_turns_out_of_order():
    with pytest.raises(TemplateError, match="alternate"):
        render("mistral", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_a_value_is_a_name_auto_or_jinja():
    assert chat_template_text("chatml") == NAMED["chatml"]
    assert chat_template_text("auto") == "auto" and chat_template_text(None) is None
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_template_text(jinja) == jinja
    with pytest.raises(ValueError, match="named format"):
        chat_template_text("chat-ml")
