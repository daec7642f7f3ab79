"""The official OpenAI Python client (PyPI openai, from build/pyenv) against skein serve at
127.0.0.1 (tests/cli_serve_robust.sh): it lists the models, completes, chats and streams both,
greedy answers equal whole and streamed, three choices ("n") streamed as whole, the newer forms
(chat's max_completion_tokens, a content of text parts, a prompt of token ids), and skein's 4xx
errors come back as the client's typed exceptions. Usage: check_openai.py URL KEY MODEL. Prints PASS/FAIL lines; stops within its
clients' 30 s timeouts."""
import sys

import openai

URL, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
c = openai.OpenAI(base_url=URL + '/v1', api_key=KEY, max_retries=0, timeout=30)


def case(name, fn):
    try:
        fn()
        print('PASS openai_%s' % name, flush=True)
    except Exception as e:
        print('FAIL openai_%s: %r' % (name, e), flush=True)


def models():
    ids = [m.id for m in c.models.list().data]
    assert ids == [MODEL], ids


def completion():
    kw = dict(model=MODEL, prompt='static int', max_tokens=8, temperature=0, extra_body={'ignore_eos': True})
    r = c.completions.create(**kw)
    assert r.object == 'text_completion' and r.usage.completion_tokens == 8, r
    s = c.completions.create(stream=True, stream_options={'include_usage': True}, **kw)
    chunks = list(s)
    text = ''.join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == r.choices[0].text, (text, r.choices[0].text)
    assert chunks[-1].usage.completion_tokens == 8, chunks[-1]


def chat():
    kw = dict(model=MODEL, messages=[{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'hi'}],
              max_tokens=6, temperature=0, extra_body={'ignore_eos': True})
    r = c.chat.completions.create(**kw)
    m = r.choices[0].message
    assert m.role == 'assistant' and r.usage.completion_tokens == 6, r
    text = ''.join(ch.choices[0].delta.content or '' for ch in c.chat.completions.create(stream=True, **kw) if ch.choices)
    assert text == m.content, (text, m.content)


def choices():
    kw = dict(model=MODEL, prompt='static int', max_tokens=5, temperature=1, seed=3, n=3, extra_body={'ignore_eos': True})
    r = c.completions.create(**kw)
    assert [x.index for x in r.choices] == [0, 1, 2] and r.usage.completion_tokens == 15, r
    text = {}
    for ch in c.completions.create(stream=True, **kw):
        for x in ch.choices: text[x.index] = text.get(x.index, '') + x.text
    assert [text[i] for i in range(3)] == [x.text for x in r.choices], (text, r.choices)


def newer_forms():
    r = c.chat.completions.create(model=MODEL, messages=[{'role': 'user', 'content': [{'type': 'text', 'text': 'hi'}]}],
                                  max_completion_tokens=4, temperature=0, extra_body={'ignore_eos': True})
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == 'length', r
    r = c.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=2, temperature=0, extra_body={'ignore_eos': True})
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 2, r


def errors():
    try:
        c.completions.create(model=MODEL, prompt='a', max_tokens=-1)
        raise AssertionError('max_tokens -1 accepted')
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body['param'] == 'max_tokens', e.body
    try:
        c.completions.create(model='gpt-4', prompt='a', max_tokens=1)
        raise AssertionError('unknown model accepted')
    except openai.NotFoundError as e:
        assert e.body['code'] == 'model_not_found', e.body
    try:
        openai.OpenAI(base_url=URL + '/v1', api_key=KEY + 'x', max_retries=0, timeout=30).models.list()
        raise AssertionError('wrong key accepted')
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e


case('models', models)
case('completion_whole_and_stream', completion)
case('chat_whole_and_stream', chat)
case('n_choices_whole_and_stream', choices)
case('newer_forms', newer_forms)
case('errors_typed', errors)
