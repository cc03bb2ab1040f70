"""A tiny random-weight T5 and a tokenizer trained offline: the translation demo without the Hub.

Everything the serving path exercises is real (``AutoTokenizer``, ``AutoModelForSeq2SeqLM``,
``generate``, the task prefix); only the weights are random, so the output is gibberish by
design. The saved directory is ~1 MB and loads and generates in a few tens of milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sigserve.demo._corpus import CORPUS

# T5's conventions, which its config and generate() rely on: pad doubles as the decoder start.
PAD_PIECE = "<pad>"
EOS_PIECE = "</s>"
UNK_PIECE = "<unk>"
SPECIAL_PIECES = (PAD_PIECE, EOS_PIECE, UNK_PIECE)  # ids 0, 1, 2, in this order

VOCAB_SIZE = 300

_EXTRA_CONFIG: dict[str, Any] = {"decoder_start_token_id": 0}

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def build_tiny_t5(target_dir: Path, *, seed: int = 0) -> Path:
    """Save a tiny T5 (config, weights, generation config) and its tokenizer into ``target_dir``.

    The result is deterministic for a given ``seed`` and does not disturb the caller's RNG.
    """
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = train_tiny_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=32,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        d_kv=16,
        # A larger init spread than T5's default, so that random logits vary with the input
        # instead of repeating one token for every prompt.
        initializer_factor=10.0,
        pad_token_id=0,
        eos_token_id=1,
        # transformers 5 dropped this from T5Config's declared fields (it still accepts it as an
        # extra), and generate() refuses to run an encoder-decoder without it.
        **_EXTRA_CONFIG,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
    # Random weights tend to repeat one token; forbidding repeats makes the gibberish look like
    # text, which is kinder to whoever reads the demo's answers.
    model.generation_config.no_repeat_ngram_size = 1

    target_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)
    return target_dir


def train_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Train a small Unigram tokenizer on the bundled corpus, wrapped for ``transformers``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import UnigramTrainer
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.NFKC()
    # Metaspace is what T5's own SentencePiece tokenizer does: words keep their leading "▁".
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = UnigramTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_PIECES),
        unk_token=UNK_PIECE,
        # The corpus is small: keep every character so that no prompt letter becomes <unk>.
        initial_alphabet=sorted(set(CORPUS) - {"\n"}),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS_PIECE)
    # T5 ends every encoder input with </s>; the model was configured (eos_token_id=1) for it.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_PIECE}",
        pair=f"$A {EOS_PIECE} $B {EOS_PIECE}",
        special_tokens=[(EOS_PIECE, eos_id)],
    )
    # transformers 5's tokenizer constructor is unannotated.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        pad_token=PAD_PIECE,
        eos_token=EOS_PIECE,
        unk_token=UNK_PIECE,
    )
