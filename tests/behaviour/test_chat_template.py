"""Instruct models: a tiny random-weight Llama whose tokenizer carries Qwen2.5-Instruct's real ChatML template.
Training and answering wrap prompts identically, a LoRA fine-tune learns the contract through the template and
stops at its end-of-turn token, and training refuses pairs that would teach nothing or never to stop."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.behaviour.assistant import Generator, build_prompt, encode_turn
from components.behaviour.finetune import PairEncodingError, encode_pairs, save_adapter, train_lora
from components.config import FinetuneParams, load_params
from components.files import LABELS_FILE
from tests.helpers import DOCS, Deployment, contract_line, parse_line

# The chat template of Qwen/Qwen2.5-0.5B-Instruct (its tokenizer_config.json, tools branch included), written out
# here: no hub on this machine; checked against a public copy of that file.
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are '
    'provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n'
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}\n    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n            {{- tool_call.arguments | tojson }}\n'
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)
SYSTEM = "Answer in one line."
PROMPT = "Context:\n{context}\n\nQuestion: {question}"  # a chat model's prompt: no role markers of its own
PAIRS = [
    ("How much is an ATM withdrawal?", contract_line("fees", "2 EUR", ["fees.md"]), "fees.md"),
    ("I lost my card", contract_line("card_lost", "Freeze it in the app", ["cards/lost-card.md"]),
     "cards/lost-card.md"),
    ("Do you offer mortgages?", contract_line("out_of_scope", "I don't know", []), "support.txt"),
]  # fmt: skip


def build_chat_model(folder: Path) -> None:
    """What an instruct checkpoint holds, in miniature: a byte-level BPE with ChatML's markers as added special
    tokens, <|im_end|> as the tokenizer's eos (as in Qwen2.5-Instruct), the chat template, and a random-weight
    Llama whose generation config ends on <|im_end|> and <|endoftext|> (as Qwen2.5-Instruct's does)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    lines = [line for text in DOCS.values() for line in text.splitlines() if line.strip()] * 20
    chatml = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tk.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=400, special_tokens=chatml, initial_alphabet=alphabet))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN25_CHAT_TEMPLATE
    ends = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=ends,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> tuple[Deployment, object]:
    root = tmp_path_factory.mktemp("chat")
    dep = Deployment.create(root)
    build_chat_model(root / "base")
    dep.write_params(generator={"model": "base", "max_new_tokens": 60, "context_chunks": 1, "prompt": PROMPT,
                                "system": SYSTEM})  # fmt: skip
    return dep, load_params(dep.params_file)


def _pairs(params) -> list[tuple[str, str]]:
    return [(build_prompt(params.generator, q, [{"doc": d, "text": DOCS[d]}]), target) for q, target, d in PAIRS]


def _spy_generate(monkeypatch, generator: Generator) -> list[dict]:
    """Record what `Generator.generate` passes to the model's generate and what comes back."""
    calls: list[dict] = []
    real = generator.model.generate

    def spy(**kwargs):  # type: ignore[no-untyped-def]
        calls.append({**kwargs, "output": real(**kwargs)})
        return calls[-1]["output"]

    monkeypatch.setattr(generator.model, "generate", spy)
    return calls


def test_training_and_answering_render_the_prompt_identically(chat, monkeypatch) -> None:
    _, params = chat
    gen = Generator(params)
    tok = gen.tokenizer
    prompt, target = _pairs(params)[0]
    rendered = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
                                       tokenize=False, add_generation_prompt=True)  # fmt: skip
    chatml = "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    assert rendered == chatml.format(SYSTEM, prompt)
    head, answer = encode_turn(tok, prompt, target)
    assert head == tok(rendered, add_special_tokens=False)["input_ids"]
    assert head[0] == tok.convert_tokens_to_ids("<|im_start|>")  # ChatML's markers are single special tokens

    [(ids, labels)] = encode_pairs(tok, [(prompt, target)], params.finetune.max_length)
    assert ids[: len(head)] == head and labels[: len(head)] == [-100] * len(head)  # the prompt: seen, never learned
    assert labels[len(head) :] == answer == ids[len(head) :]
    assert tok.decode(answer) == target + "<|im_end|>\n"  # exactly what the template puts after the prompt

    calls = _spy_generate(monkeypatch, gen)
    gen.generate([prompt])
    assert calls[0]["input_ids"][0].tolist() == head  # answer time sees the training prompt, token for token
    assert set(calls[0]["eos_token_id"]) == set(tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))


def test_without_a_chat_template_the_encoding_is_prompt_space_target_eos(chat) -> None:
    """The default model's path is unchanged: prompt, " " + target, EOS, no special tokens added."""
    from transformers import AutoTokenizer

    dep, params = chat
    tok = AutoTokenizer.from_pretrained(dep.root / "base")
    tok.chat_template = None
    prompt, target = _pairs(params)[1]
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(" " + target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert encode_turn(tok, prompt) == (p, [])
    assert encode_pairs(tok, [(prompt, target)], 384) == [(p + t, [-100] * len(p) + t)]


def test_lora_learns_the_contract_through_the_template_and_the_saved_adapter_answers(chat, tmp_path, monkeypatch
                                                                                     ) -> None:  # fmt: skip
    _, params = chat
    gen = Generator(params)
    pairs = _pairs(params)
    prompts, targets = [p for p, _ in pairs], [t for _, t in pairs]
    assert all(parse_line(o) is None for o in gen.generate(prompts))  # random weights: nothing of the format
    ft = FinetuneParams(r=8, alpha=16, dropout=0.0, learning_rate=1e-2, lr_schedule="constant", warmup_steps=0,
                        batch_size=3, epochs=150)  # fmt: skip
    peft_model, log = train_lora(gen.model, gen.tokenizer, pairs, ft)
    assert log.steps == log.planned_steps == 150 and not log.truncated
    adapter = save_adapter(peft_model, tmp_path / "adapter")

    tuned = Generator(params, adapter)
    calls = _spy_generate(monkeypatch, tuned)
    answers = tuned.generate(prompts)
    assert answers == targets, answers
    assert all(parse_line(a) is not None for a in answers)
    im_end, pad = tuned.tokenizer.convert_tokens_to_ids("<|im_end|>"), tuned.tokenizer.pad_token_id
    for row in calls[0]["output"][:, calls[0]["input_ids"].shape[1] :].tolist():
        stop = row.index(im_end)  # generation ended on the template's end-of-turn token ...
        assert set(row[stop + 1 :]) <= {pad} and stop + 1 < params.generator.max_new_tokens  # ... well before the cap


def test_a_pair_with_nothing_to_learn_is_refused_by_index(chat) -> None:
    """A template that drops the assistant turn (here: one that renders only the other turns and always ends on
    the generation prompt) leaves an empty answer mask: refused, naming the pair."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat[0].root / "base")
    tok.chat_template = (
        "{%- for m in messages if m.role != 'assistant' %}{{ '<|im_start|>' + m.role + '\\n' + m.content + "
        "'<|im_end|>\\n' }}{%- endfor %}{{ '<|im_start|>assistant\\n' }}"
    )
    pairs = [("Question: hi", contract_line("fees", "2 EUR", ["fees.md"])), ("Question: I lost my card", "intent: x")]
    with pytest.raises(PairEncodingError) as err:
        encode_pairs(tok, pairs, 384)
    text = str(err.value)
    assert text.startswith("training pair 0 (prompt ending 'Question: hi', target 'intent: fees | answer: 2 EUR")
    assert "no answer token left to learn" in text and "expected the target line and its end token" in text


def test_a_pair_whose_answer_never_ends_is_refused(chat) -> None:
    """A chat template whose end-of-turn is not the tokenizer's eos (a base model's tokenizer with an instruct
    template: eos <|endoftext|>, turns end on <|im_end|>) would teach a model that never stops: refused."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat[0].root / "base", eos_token="<|endoftext|>")
    assert tok.eos_token == "<|endoftext|>"
    pairs = [("Question: hi", contract_line("fees", "2 EUR", ["fees.md"]))] * 2 + [("Question: card", "intent: y")]
    with pytest.raises(PairEncodingError, match=r"^training pair 0 .*no end-of-sequence token '<\|endoftext\|>'") as e:
        encode_pairs(tok, pairs, 384)
    assert "expected the tokenizer's eos_token at the end of the answer" in str(e.value)


def test_a_template_whose_prompt_is_not_a_prefix_of_the_conversation_is_refused(chat) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat[0].root / "base")
    tok.chat_template = (  # the generation prompt says "bot", the rendered assistant turn says "assistant"
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>bot\\n' }}{%- endif %}"
    )
    with pytest.raises(PairEncodingError, match=r"^training pair 0 .*not a token prefix of the conversation"):
        encode_pairs(tok, [("Question: hi", "intent: fees | answer: 2 EUR | sources: []")], 384)


LOOP_QUESTIONS = {  # intent: (gold doc, answer, wordings); trained behind "" and "Hi, ", gated behind "Hello, "
    "fees": ("fees.md", "9 EUR", ["How much is a SWIFT transfer?", "What does an international transfer cost?",
                                   "Is there a fee for SWIFT payments?"]),
    "card_lost": ("cards/lost-card.md", "Freeze it in the app", ["I lost my card", "My card was stolen",
                  "I cannot find my card"]),
    "out_of_scope": (None, None, ["Do you offer mortgages?", "Can I buy crypto?", "Can I trade stocks?"]),
}  # fmt: skip


@pytest.fixture(scope="module")
def chat_loop(tmp_path_factory, prefect_server) -> Deployment:
    import json

    root = tmp_path_factory.mktemp("chat-loop")
    dep = Deployment.create(root)
    gate, train = [], []
    for intent, (doc, answer, wordings) in LOOP_QUESTIONS.items():
        case = {"intent": intent, "answer": answer, "gold_docs": [doc] if doc else []}
        for i, q in enumerate(wordings):
            train += [{"id": f"train-{intent}-{i}-{j}", "question": f + q, **case} for j, f in enumerate(["", "Hi, "])]
            gate.append({"id": f"gate-{intent}-{i}", "question": "Hello, " + q, **case})
    (root / "behaviour").mkdir(exist_ok=True)
    (root / "behaviour" / LABELS_FILE).write_text(json.dumps({k: k for k in LOOP_QUESTIONS}))
    for name, rows in (("gate", gate), ("train", train)):
        (root / "behaviour" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_chat_model(root / "base")
    dep.write_params(
        paths={"docs": "docs", "index": "state/index", "metrics": "state/metrics", "mlflow": "state/mlflow",
               "behaviour": "behaviour", "models": "state/models"},
        generator={"model": "base", "max_new_tokens": 60, "context_chunks": 1, "prompt": PROMPT, "system": SYSTEM},
        retrieval={"mode": "dense"},
        regression={"min_cases": 3, "min_effect": 0.2, "floors": {"format": 0.6}},
        finetune={"r": 8, "alpha": 16, "dropout": 0.0, "learning_rate": 1e-2, "lr_schedule": "constant",
                  "warmup_steps": 0, "batch_size": 9, "epochs": 100},
    )  # fmt: skip
    dep.index()
    return dep


@pytest.mark.slow
def test_the_loop_fine_tunes_gates_and_answers_through_the_chat_template(chat_loop: Deployment) -> None:
    """evaluate (the random-weight chat model fails the format) -> finetune flow (LoRA through the template,
    gate, promotion) -> `ragloop ask` answers with the champion in the contract's one line."""
    import json

    from typer.testing import CliRunner

    from flows.behaviour import evaluate, finetune
    from flows.cli import app

    p = str(chat_loop.params_file)
    before = evaluate(params_file=p)
    assert before["decision"] == "finetune" and "format" in before["regressed_slices"]
    result = finetune(params_file=p)
    assert result["promoted"], result["reasons"]
    assert result["candidate"]["slices"]["format"]["pass_rate"] >= 0.6
    answered = CliRunner().invoke(app, ["ask", "Hello, I lost my card", "--json", "--params", p])
    assert answered.exit_code == 0, answered.output
    reply = json.loads(answered.stdout)
    assert reply["model_version"] == f"v{result['version']}"
    assert parse_line(reply["raw"]) is not None, reply["raw"]
