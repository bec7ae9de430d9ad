"""Hugging Face `tokenizers` files read as zoo tokenizers, so converted checkpoints tokenize like the
originals: a `tokenizer.json`, BERT's WordPiece `vocab.txt`, or GPT-2's byte-level BPE files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from zoo.tokenizer import TokenizerError

_SPECIAL_CANDIDATES = {"cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>"),
                       "pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"),
                       "eos": ("</s>", "<|endoftext|>", "[SEP]"), "bos": ("<s>", "<|endoftext|>", "[CLS]")}


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer (`tokenizer.json`, BERT `vocab.txt`, GPT-2 `vocab.json` +
    `merges.txt`) with the methods of `Tokenizer`, so converted checkpoints tokenize like the originals.

    `encode` adds no special tokens (families add their own); `decode` drops them. Special ids the
    vocabulary lacks are None (`cls_id`, `sep_id`, `mask_id`); a missing pad falls back to EOS.
    """

    def __init__(self, backend: object):
        self._tok = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        found = {k: next((vocab[n] for n in names if n in vocab), None) for k, names in _SPECIAL_CANDIDATES.items()}
        self.cls_id, self.sep_id, self.mask_id = found["cls"], found["sep"], found["mask"]
        self._eos, self._bos, self._unk = found["eos"], found["bos"], found["unk"]
        self.pad_id = found["pad"] if found["pad"] is not None else (self._eos if self._eos is not None else 0)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> HFTokenizer:
        """Load a `tokenizer.json`."""
        from tokenizers import Tokenizer as Backend

        try:
            return cls(Backend.from_file(os.fspath(path)))
        except Exception as err:  # tokenizers raises plain Exception for unreadable files
            raise TokenizerError(f"cannot read tokenizer {path}: {str(err).splitlines()[0] if str(err) else err}") from None

    @classmethod
    def from_vocab(cls, path: str | os.PathLike[str], lowercase: bool = True) -> HFTokenizer:
        """BERT's WordPiece tokenizer from a `vocab.txt` (as `BertTokenizerFast(vocab_file, do_lower_case)`)."""
        from tokenizers import Tokenizer as Backend, decoders, models, normalizers, pre_tokenizers

        try:
            with open(path, encoding="utf-8") as f:
                vocab = {line.rstrip("\n"): i for i, line in enumerate(f)}
        except OSError as err:
            raise TokenizerError(f"cannot read vocabulary {path}: {err.strerror or err}") from None
        backend = Backend(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        backend.add_special_tokens([t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in vocab])
        return cls(backend)

    @classmethod
    def from_bpe(cls, vocab_json: str | os.PathLike[str], merges_txt: str | os.PathLike[str]) -> HFTokenizer:
        """GPT-2's byte-level BPE from `vocab.json` and `merges.txt`."""
        from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers

        try:
            backend = Backend(models.BPE.from_file(os.fspath(vocab_json), os.fspath(merges_txt)))
        except Exception as err:
            raise TokenizerError(f"cannot read BPE files {vocab_json}: {err}") from None
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        if "<|endoftext|>" in backend.get_vocab():
            backend.add_special_tokens(["<|endoftext|>"])
        return cls(backend)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write `tokenizer.json`."""
        self._tok.save(os.fspath(path))

    def to_bytes(self) -> bytes:
        """The tokenizer.json text, encoded."""
        return self._tok.to_str().encode("utf-8")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (parallel in the Rust backend)."""
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens and padding dropped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        """End of sequence: </s>, <|endoftext|> or [SEP]."""
        return self.sep_id if self._eos is None else self._eos

    @property
    def unk_id(self) -> int:
        """Id of the unknown token (-1 if there is none)."""
        return -1 if self._unk is None else self._unk

    @property
    def bos_id(self) -> int | None:
        """Start of sequence: <s>, <|endoftext|> or [CLS] (None if there is none)."""
        return self._bos

    @property
    def num_sentinels(self) -> int:
        """Specials are named tokens here, not reserved top ids."""
        return 0

    def id_to_piece(self, i: int) -> str:
        """The vocabulary entry of id `i`."""
        return self._tok.id_to_token(i)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size})"
