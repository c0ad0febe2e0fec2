"""``customnn generate RUN --prompt TEXT``: sample text from a trained GPT, with a key/value cache.

Temperature, top-k and nucleus (top-p) sampling, each new token computed from the cached keys
and values of the earlier ones (``customnn/models/sampling.py`` says how the context window
is kept when the cache is full). stdout gets the prompt and its continuation, nothing else;
messages go to stderr.

    customnn generate runs/gpt-20261127-120000 --prompt "ROMEO:" --max-new-tokens 500 --seed 1
    customnn generate runs/gpt-20261208-010000 --model examples/char_lstm.py:CharLSTM --prompt "ROMEO:"
"""

from __future__ import annotations

import sys

import torch

from customnn.core import validate
from customnn.data.text import default_prompt
from customnn.core.errors import UserError
from customnn.models.sampling import generate
from customnn.commands.evaluate import add_model_argument
from customnn.commands.train import model_spec
from customnn.train.gpt import block_size_of
from customnn.train.loading import DTYPES, check_compile, compile_model
from customnn.train.tasks import load_model

MAX_NEW_TOKENS = 10**9  # a billion tokens: days of generation, far past any use


def add_arguments(p) -> None:
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="a GPT run folder or a .safetensors checkpoint")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                   help="which checkpoint of a run folder (default: best, else last)")
    p.add_argument("--prompt", default=None,
                   help="text to continue (default: a newline, or the model's first character if it has none)")
    p.add_argument("--max-new-tokens", type=int, default=500, help="tokens to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="divide the logits by this; 0 is greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only from the most likely tokens whose probability sums to p")
    p.add_argument("--seed", type=int, default=1337, help="random seed (default 1337)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--dtype", choices=list(DTYPES), default=None,
                   help="cast the weights to this dtype (default: as saved); bfloat16 or float16 halve the memory")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context for every token")
    add_model_argument(p)
    p.add_argument("--compile", action="store_true",
                   help="run the model through torch.compile (the first tokens compile; needs a C++ compiler on the CPU)")


def check_sampling_args(max_new_tokens: int, temperature: float, top_k, top_p) -> None:
    """Every sampling setting in its range (``customnn/core/validate.py``), or a one-line error.

    Every accepted value is well defined in the sampler: a temperature so small that the
    logits overflow is greedy decoding, a top-p that would keep nothing keeps the most likely
    token, a top-k above the vocabulary keeps it all."""
    if isinstance(max_new_tokens, int) and max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    validate.count(max_new_tokens, "--max-new-tokens", 0, MAX_NEW_TOKENS)
    validate.number(temperature, "--temperature", 0.0)
    if top_k is not None:
        validate.count(top_k, "--top-k", 1)
    if top_p is not None:
        validate.probability(top_p, "--top-p")


def run(args) -> int:
    check_sampling_args(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    validate.seed(args.seed)
    if args.prompt is not None:
        validate.text(args.prompt, "--prompt")
        if args.prompt == "":
            raise UserError("--prompt is empty: give at least one character to start from")
    device = validate.device(args.device)
    if args.compile:
        check_compile(device)
    model, vocab, path, ckpt = load_model(args.run, prefer=args.checkpoint, device=device, kind="gpt",
                                          model=model_spec(args), dtype=args.dtype)
    if args.compile:
        compile_model(model, device, generation=True)
    meta = ckpt.meta
    prompt = args.prompt if args.prompt is not None else default_prompt(vocab)
    ids = vocab.encode(prompt)  # characters: one outside the vocabulary is a UserError naming it
    unit = "characters" if vocab.kind == "char" else "tokens"
    print(f"generating {args.max_new_tokens} {unit} with {path} (step {meta.get('step')}) on {device}",
          file=sys.stderr, flush=True)
    g = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    out.write(prompt)
    out.flush()

    stream = vocab.stream()  # whole characters, also when a byte-level token ends inside one

    def emit(tok: int) -> None:
        text = stream.feed(tok)
        if text:
            out.write(text)
            out.flush()

    generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, g,
             use_cache=not args.no_cache, on_token=emit, block_size=block_size_of(model, ckpt, path))
    out.write(stream.flush() + "\n")
    out.flush()
    return 0
