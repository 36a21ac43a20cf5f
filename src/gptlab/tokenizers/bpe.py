"""Our own byte-level BPE (byte-pair encoding), trainable, and equal to tiktoken's GPT-2 encoder.

How it works (GPT-2's recipe):
1. Pre-split the text with a regex (words, numbers, punctuation runs, whitespace) so merges never
   cross a word boundary: " the" can become a token, "e t" never.
2. Start from the 256 possible bytes of the UTF-8 encoding, then repeatedly merge the most frequent
   adjacent pair into a new token until the vocabulary has the size asked for.
3. Encode a chunk by merging, again and again, the adjacent pair whose concatenation has the lowest
   rank (earliest merge) — exactly what tiktoken does, so ids match token for token.

Why a byte-level BPE needs no <UNK> for text: every string is a sequence of UTF-8 bytes and all
256 bytes are in the vocabulary, so any text — emoji, CJK, a typo, a language never seen in
training — encodes (into more, shorter tokens) and decodes back exactly. An unknown word costs
length, never information. A *code* vocabulary (one token per diagnosis or drug code, as in the
EHR models) is a closed set of symbols with no smaller pieces to fall back on: a code unseen in
training has no id, so it needs an explicit <UNK> (or a hierarchy to back off to). <UNK> is still
accepted here as a special token, for vocabularies that share ids with such models.
"""

from __future__ import annotations

import heapq
import json
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import regex
from tqdm.auto import tqdm

from gptlab.tokenizers.base import Tokenizer, load_tokenizer, register

if TYPE_CHECKING:
    import tiktoken

# tiktoken's current spelling of the GPT-2 and GPT-4 (cl100k) splits: possessive quantifiers make
# the regex faster and split exactly like the originals.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}

_CACHE_LIMIT = 1 << 20  # distinct chunks remembered by the encoder before the cache restarts


def _byte_pair_merge(ranks: dict[bytes, int], piece: bytes, max_rank: int | None = None) -> list[bytes]:
    """Split `piece` into tokens: merge the lowest-ranked adjacent pair (the leftmost on a tie)
    until none is left.

    With `max_rank`, only tokens ranked below it may form: stopping one step short of a token
    yields the two parts it was merged from (used to recover merges from tiktoken's ranks).

    The candidate pairs wait in a heap keyed by (rank, start), so a merge costs O(log n) instead of
    a rescan of the whole piece: a chunk of 100,000 letters (a DNA string, a base64 blob) took
    minutes with the rescan. Parts are linked by `nxt` (the start of the next part; len(piece) at
    the end); a heap entry whose pair has changed since it was pushed is skipped when popped.
    """
    n = len(piece)
    nxt = list(range(1, n + 1))
    prv = list(range(-1, n - 1))
    alive = [True] * n

    def candidate(i: int) -> tuple[int, int] | None:
        """(rank, i) of the pair starting at part i, if it is a token that may form."""
        if nxt[i] >= n:
            return None
        rank = ranks.get(piece[i : nxt[nxt[i]]])
        return None if rank is None or (max_rank is not None and rank >= max_rank) else (rank, i)

    heap = [c for i in range(n - 1) if (c := candidate(i))]
    heapq.heapify(heap)
    while heap:
        entry = heapq.heappop(heap)
        i = entry[1]
        if not alive[i] or candidate(i) != entry:  # stale: part i was merged away or changed
            continue
        j = nxt[i]  # merge part j into part i
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
            prv[nxt[j]] = i
        for k in (prv[i], i):  # the two pairs that now hold the merged part
            if k >= 0 and (c := candidate(k)):
                heapq.heappush(heap, c)
    parts, i = [], 0
    while i < n:
        parts.append(piece[i : nxt[i]])
        i = nxt[i]
    return parts


def _pair_index(words: list[list[int]], freqs: list[int]):
    """pair -> count over all chunks, pair -> the chunks holding it, and a max-heap of the counts."""
    stats: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            stats[pair] += freq
            where[pair].add(wi)
    heap = [(-count, pair) for pair, count in stats.items()]
    heapq.heapify(heap)
    return stats, where, heap


def _train_merges(chunk_counts: Counter[str], n_merges: int, progress: bool = True) -> list[tuple[int, int]]:
    """The first `n_merges` BPE merges of the pre-split chunks, fast. Each distinct chunk is held once
    with its count; a heap keeps pair counts ordered, and a merge only revisits the chunks that contain
    its pair, adjusting the counts of the neighbouring pairs (Hugging Face's BpeTrainer bookkeeping).
    Ties go to the smallest (left, right) id pair, so training is deterministic. A merge whose bytes
    already exist as a token (reached by another path) reuses that token and adds no new one."""
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    freqs = list(chunk_counts.values())
    stats, where, heap = _pair_index(words, freqs)
    vocab = [bytes([i]) for i in range(256)]
    token_id = {token: i for i, token in enumerate(vocab)}
    merges: list[tuple[int, int]] = []
    bar = tqdm(total=n_merges, desc="BPE merges", disable=None if progress else True, leave=False)  # None: off when not a terminal
    while len(merges) < n_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        count = stats.get(pair, 0)
        if count != -neg_count:  # stale entry: counts only fall between pushes, so re-file it
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        a, b = pair
        token = vocab[a] + vocab[b]
        new = token_id.get(token)
        if new is None:
            new = token_id[token] = len(vocab)
            vocab.append(token)
            merges.append(pair)
            bar.update()
        touched: set[tuple[int, int]] = set()
        for wi in where.pop(pair):  # rewrite each chunk holding (a, b); the neighbouring pairs' counts move
            word, freq = words[wi], freqs[wi]
            out: list[int] = []
            i, n = 0, len(word)
            while i < n:
                if word[i] == a and i + 1 < n and word[i + 1] == b:
                    if out:  # left neighbour (already merged if it was `new`)
                        left = out[-1]
                        stats[(left, a)] -= freq
                        stats[(left, new)] += freq
                        where[(left, new)].add(wi)
                        touched.add((left, new))
                    if i + 2 < n:  # right neighbour
                        right = word[i + 2]
                        stats[(b, right)] -= freq
                        stats[(new, right)] += freq
                        where[(new, right)].add(wi)
                        touched.add((new, right))
                    out.append(new)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[wi] = out
        del stats[pair]
        for p in touched:  # only pairs holding `new` grew: file their fresh counts
            if stats[p] > 0:
                heapq.heappush(heap, (-stats[p], p))
    bar.close()
    return merges


@register("bpe")
class BPETokenizer(Tokenizer):
    """Byte-level BPE: 256 byte tokens, `merges` in order (merge k makes id 256 + k), then specials.

    `byte_order[i]` is the byte value of id i < 256: identity for our own training, GPT-2's
    printable-first order for `from_tiktoken("gpt2")`.
    """

    def __init__(
        self,
        merges: Sequence[Sequence[int]],
        special_tokens: dict[str, int] | None = None,
        pattern: str = "gpt2",
        byte_order: Sequence[int] | None = None,
    ):
        byte_order = list(range(256)) if byte_order is None else list(byte_order)
        if sorted(byte_order) != list(range(256)):
            raise ValueError("byte_order must be a permutation of the 256 byte values 0..255")
        self.byte_order = byte_order
        self.vocab: list[bytes] = [bytes([b]) for b in byte_order]  # id -> bytes
        self.merges: list[tuple[int, int]] = []
        for k, merge in enumerate(merges):
            a, b = int(merge[0]), int(merge[1])
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise ValueError(
                    f"merge {k} = {list(merge)} uses an id not yet defined (< {len(self.vocab)})"
                )
            self.merges.append((a, b))
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.ranks = {token: i for i, token in enumerate(self.vocab)}  # bytes -> id (= rank)
        if len(self.ranks) != len(self.vocab):
            raise ValueError("merges produce the same token twice; each merge must make a new token")

        self.special_tokens = dict(special_tokens or {})
        for name, i in self.special_tokens.items():
            if i < len(self.vocab) or list(self.special_tokens.values()).count(i) > 1:
                raise ValueError(
                    f"special token {name!r} has id {i}, which is taken; specials need distinct ids "
                    f">= {len(self.vocab)}"
                )
        self.id_to_special = {i: name for name, i in self.special_tokens.items()}
        self.pattern = SPLIT_PATTERNS.get(pattern, pattern)
        self._split = regex.compile(self.pattern)
        self._cache: dict[str, list[int]] = {}

    # ---- training and construction -------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        pattern: str = "gpt2",
        progress: bool = True,
    ) -> BPETokenizer:
        """Learn merges on `text` (a string, or an iterable of documents counted one by one) until
        the vocabulary (specials included) has `vocab_size` ids.

        `pattern` is "gpt2", "gpt4" or a regex of your own. Special-token strings in `text` are
        cut out before counting, so no merge ever spans them. If the text runs out of pairs first,
        the vocabulary stays smaller (with a warning).
        """
        special_tokens = list(dict.fromkeys(special_tokens))
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is below the 256 byte tokens + {len(special_tokens)} special "
                f"tokens {special_tokens}"
            )
        split = regex.compile(SPLIT_PATTERNS.get(pattern, pattern))
        cut = _special_regex(special_tokens).split if special_tokens else lambda doc: [doc]
        chunk_counts: Counter[str] = Counter()
        for doc in [text] if isinstance(text, str) else text:
            for piece in cut(doc):
                chunk_counts.update(split.findall(piece))
        merges = _train_merges(chunk_counts, n_merges, progress)
        if len(merges) < n_merges:
            warnings.warn(
                f"the text has only enough distinct pairs for {len(merges)} merges: vocab_size is "
                f"{256 + len(merges) + len(special_tokens)}, not {vocab_size}",
                stacklevel=2,
            )
        first_special = 256 + len(merges)
        specials = {name: first_special + i for i, name in enumerate(special_tokens)}
        return cls(merges, specials, pattern)

    @classmethod
    def from_data(cls, cfg: dict[str, Any], train_text: str | Iterable[str], full_text: Callable[[], str]) -> BPETokenizer:
        """data.tokenizer=bpe: vocab_size, and any other `train` option (pattern, special_tokens, ...)."""
        options = {k: v for k, v in cfg.items() if k not in ("kind", "vocab_size")}
        return cls.train(train_text, int(cfg["vocab_size"]), **options)

    @classmethod
    def from_tiktoken(cls, name: str = "gpt2") -> BPETokenizer:
        """Rebuild a tiktoken encoding's merges from its ranks (GPT-2's works offline)."""
        import tiktoken

        from gptlab.tokenizers.tiktoken_bpe import use_shipped_tiktoken_cache

        use_shipped_tiktoken_cache()
        enc = tiktoken.get_encoding(name)
        ranks: dict[bytes, int] = enc._mergeable_ranks
        by_rank = sorted(ranks, key=ranks.__getitem__)
        dense = [ranks[t] for t in by_rank] == list(range(len(by_rank)))
        if not dense or any(len(t) != 1 for t in by_rank[:256]):
            raise ValueError(
                f"tiktoken encoding {name!r} does not start with 256 byte tokens and dense ranks"
            )
        merges = []
        for rank in range(256, len(by_rank)):
            parts = _byte_pair_merge(ranks, by_rank[rank], max_rank=rank)
            if len(parts) != 2:
                raise ValueError(f"token {by_rank[rank]!r} of {name!r} is not a merge of two earlier tokens")
            merges.append((ranks[parts[0]], ranks[parts[1]]))
        return cls(merges, dict(enc._special_tokens), enc._pat_str, [t[0] for t in by_rank[:256]])

    def to_tiktoken(self, name: str = "gptlab-bpe") -> tiktoken.Encoding:
        """The same tokenizer as a tiktoken Encoding: identical ids (tiktoken merges by the same
        ranks), encoded in Rust — the fast path for preparing large datasets."""
        import tiktoken

        return tiktoken.Encoding(
            name, pat_str=self.pattern, mergeable_ranks=self.ranks, special_tokens=self.special_tokens
        )

    def fast_encoder(self):
        return self.to_tiktoken().encode_ordinary

    # ---- the Tokenizer interface ---------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return max([len(self.vocab) - 1, *self.special_tokens.values()]) + 1

    @property
    def eot_token_id(self) -> int | None:
        for name in ("<|endoftext|>", "<EOS>"):
            if name in self.special_tokens:
                return self.special_tokens[name]
        return None

    def encode(
        self,
        text: str,
        allowed_special: Literal["all"] | Collection[str] = (),
        disallowed_special: Literal["all"] | Collection[str] = "all",
    ) -> list[int]:
        """Token ids of `text`, with tiktoken's rules for special-token strings found in it:
        `allowed_special` ones become their special id; `disallowed_special` ones ("all" = every
        special not allowed) raise ValueError; the rest are encoded as ordinary text."""
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        disallowed = (
            set(self.special_tokens) - allowed if disallowed_special == "all" else set(disallowed_special)
        )
        unknown = (allowed | disallowed) - set(self.special_tokens)
        if unknown:
            raise ValueError(
                f"unknown special tokens {sorted(unknown)}; this tokenizer has {sorted(self.special_tokens)}"
            )
        if disallowed and (found := _special_regex(disallowed).search(text)):
            raise ValueError(
                f"text contains the special token {found.group()!r}: pass allowed_special={{{found.group()!r}}} "
                f"to encode it as a special token, or disallowed_special=() to encode it as text"
            )
        if not allowed:
            return self.encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(_special_regex(allowed, capture=True).split(text)):
            if i % 2:  # the split keeps the matched specials at odd positions
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of `text`, special-token strings included as plain text."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot be UTF-8: replace them, as tiktoken does
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        ids: list[int] = []
        cache = self._cache
        for chunk in self._split.findall(text):
            chunk_ids = cache.get(chunk)
            if chunk_ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                chunk_ids = cache[chunk] = self._encode_chunk(chunk.encode("utf-8"))
            ids.extend(chunk_ids)
        return ids

    def _encode_chunk(self, piece: bytes) -> list[int]:
        if piece in self.ranks:  # a whole chunk that is one token (tiktoken's shortcut too)
            return [self.ranks[piece]]
        return [self.ranks[part] for part in _byte_pair_merge(self.ranks, piece)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        out = []
        for i in ids:
            i = int(i)
            if 0 <= i < len(self.vocab):
                out.append(self.vocab[i])
            elif i in self.id_to_special:
                out.append(self.id_to_special[i].encode("utf-8"))
            else:
                raise ValueError(f"token id {i} is not in this BPE vocabulary of {self.vocab_size} ids")
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that do not form valid UTF-8 (a cut-off character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_str(self, i: int) -> str:
        """Readable form of one token: its text, with undecodable bytes shown as \\xNN."""
        if i in self.id_to_special:
            return self.id_to_special[i]
        return self.vocab[i].decode("utf-8", errors="backslashreplace")

    # ---- saving ----------------------------------------------------------------------------------

    def to_spec(self) -> dict[str, Any]:
        """Readable JSON: each merge is [left id, right id, "resulting token"] (the text is for
        people; the ids are what loading uses)."""
        return {
            "kind": "bpe",
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "byte_order": self.byte_order,
            "merges": [[a, b, self.token_str(256 + k)] for k, (a, b) in enumerate(self.merges)],
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> BPETokenizer:
        missing = {"pattern", "merges"} - set(spec)
        if missing:
            raise ValueError(f"BPE tokenizer spec lacks keys {sorted(missing)}")
        return cls(spec["merges"], spec.get("special_tokens"), spec["pattern"], spec.get("byte_order"))

    def save(self, path: str | Path) -> None:
        """Write the spec as JSON with one merge per line, so the file reads as the merge list."""
        spec = self.to_spec()
        fields = [
            f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in spec.items() if k != "merges"
        ]
        merges = ",\n".join("  " + json.dumps(m, ensure_ascii=False) for m in spec["merges"])
        fields.append(f' "merges": [\n{merges}\n ]')
        Path(path).write_text("{\n" + ",\n".join(fields) + "\n}\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"{path} holds a {tokenizer.kind!r} tokenizer, not a BPE one")
        return tokenizer


def _special_regex(specials: Iterable[str], capture: bool = False) -> regex.Pattern:
    """Alternation of the special strings, longest first so none shadows a longer one."""
    body = "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True))
    return regex.compile(f"({body})" if capture else body)
