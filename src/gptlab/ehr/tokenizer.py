"""EHRTokenizer: a patient timeline as a sequence of tokens (ETHOS-style).

    <TL_START> GENDER//F AGE//60-64  ICD10_CHAPTER//4 ICD10//E11 ICD10//E11.9  MEDICATION//START
    ATC//A ATC//A10 ATC//A10B ATC//A10BA ATC//A10BA02  LAB//creatinine Q7  TIME//1d-3d  ...  <TL_END>

- Prefix: static (null-time) codes such as the sex, then the age at the first event in bins.
  MEDS_BIRTH is used for the age and not emitted as an event. With age_at="window" a window or
  prompt that starts later in the timeline restates the age at its own first timed token
  (`window_age_ids`, `encode_with_times`), as ETHOS restates the static prefix per window: a
  model should not have to sum decades of interval tokens to know how old the patient is. With
  age_updates the timeline itself says each new age bin (an AGE token before the first event in
  it), so a prompt whose newest tokens span decades of sparse visits still ends knowing the age
  at the prediction time.
- Time: between consecutive distinct timestamps, one interval token from configurable edges
  (ETHOS: 5m-15m … 3mt-6mt, then 6mt-1y 1y-2y 2y-5y 5y+). long_gaps="bounded": a gap ≥ the last
  edge is one top token, so any gap costs at most one token; "repeat" (the old layout, kept to
  read old checkpoints) repeats the top token per multiple of the last edge, then the remainder.
- Codes are split into hierarchy parts so rare codes still say something: ICD-10-CM as chapter /
  category / full code (ICD-9 mapped to ICD-10 first), medications as their verb + ATC levels,
  other codes whole. A part seen fewer than min_count times in training becomes its family's
  UNK (e.g. ICD10//UNK), so the vocabulary only holds what the model can learn.
- Numeric values become decile tokens Q1..Q10 after their code, with cut points fitted per code
  on the training split.
Token strings contain no whitespace, so `decode` (space-joined) and `encode` invert each other;
`readable` renders a timeline with code names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import numpy as np

from gptlab.ehr import codes as C
from gptlab.ehr.meds import DEATH, Problems, Timeline
from gptlab.tokenizers.base import Tokenizer, register

START, END, UNK = "<TL_START>", "<TL_END>", "<UNK>"
# ETHOS's interval edges in minutes: 5m 15m 1h 2h 6h 12h 1d 3d 1w 2w 1mt 3mt 6mt (1mt = 30 days)
ETHOS_TIME_EDGES = (5, 15, 60, 120, 360, 720, 1440, 4320, 10080, 20160, 43200, 129600, 259200)
MINUTE_US = 60_000_000


LONG_GAPS = ("repeat", "bounded")
AGE_AT = ("first_event", "window")


def format_minutes(m: int) -> str:
    for unit, size in (("y", 525600), ("mt", 43200), ("w", 10080), ("d", 1440), ("h", 60)):
        if m % size == 0:
            return f"{m // size}{unit}"
    return f"{m}m"


def time_bin_names(edges: Iterable[int], long_gaps: str = "repeat") -> list[str]:
    """One name per bin; the top bin is `TIME//5y+` when bounded (it stands for any longer gap)."""
    edges = list(edges)
    top = f"TIME//{format_minutes(edges[-1])}" + ("+" if long_gaps == "bounded" else "")
    return [f"TIME//{format_minutes(a)}-{format_minutes(b)}" for a, b in zip(edges, edges[1:])] + [top]


def gap_tokens(gap_minutes: float, edges: tuple[int, ...], names: list[str], long_gaps: str = "repeat") -> list[str]:
    """Interval tokens for one gap: nothing below edges[0]; bounded: the one bin holding the gap
    (the top bin for any gap ≥ edges[-1]); repeat: the top token for each full multiple of
    edges[-1], then the bin of the remainder."""
    top = edges[-1]
    if long_gaps == "bounded":
        if gap_minutes < edges[0]:
            return []
        return [names[min(int(np.searchsorted(edges, gap_minutes, side="right")) - 1, len(names) - 1)]]
    out = [names[-1]] * int(gap_minutes // top)
    rest = gap_minutes - top * len(out)
    if rest >= edges[0]:
        out.append(names[int(np.searchsorted(edges, rest, side="right")) - 1])
    return out


def sanitize(code: str) -> str:
    return "_".join(code.split())


def family(code: str) -> str:
    return code.split("//", 1)[0]


def code_parts(code: str, atc_levels: tuple[int, ...], problems: Problems | None = None) -> tuple[str, ...]:
    """Hierarchy token strings of one MEDS code (before the rare → UNK step)."""
    pieces = code.split("//")
    if len(pieces) == 4 and pieces[0] == "DIAGNOSIS" and pieces[1] == "ICD":
        version, dx = pieces[2], pieces[3]
        if version == "9":
            mapped = C.icd9_to_icd10(dx)
            if mapped is None:
                if problems is not None:
                    problems.add("icd9_without_icd10_map_kept_whole", 1, dx)
                return (f"ICD9//{dx}",)
            dx = mapped
        parts = C.icd10_parts(dx)
        if parts is None:
            if problems is not None:
                problems.add("invalid_icd10_kept_whole", 1, dx)
            return (f"ICD10//{dx}",)
        return (f"ICD10_CHAPTER//{parts[0]}", *(f"ICD10//{p}" for p in parts[1:]))
    if len(pieces) == 3 and pieces[0] == "MEDICATION":
        # prescriptions: MEDICATION//START//<drug>; administrations: MEDICATION//<drug>//<event>
        verb, drug = (pieces[1], pieces[2]) if pieces[1] in ("START", "STOP") else (pieces[2], pieces[1])
        atc = C.drug_to_atc(drug)
        what = tuple(f"ATC//{p}" for p in C.atc_parts(atc, atc_levels)) if atc else (f"DRUG//{sanitize(drug)}",)
        return (f"MEDICATION//{sanitize(verb)}", *what)
    return (sanitize(code),)


def part_family(token: str) -> str:
    return token.split("//", 1)[0] if "//" in token else token


@register("ehr")
class EHRTokenizer(Tokenizer):
    def __init__(self, vocab: list[str], quantiles: dict[str, list[float]], *, time_edges: Iterable[int],
                 atc_levels: Iterable[int], age_bin_years: int, names: dict[str, str] | None = None,
                 min_count: int = 5, long_gaps: str = "repeat", age_at: str = "first_event",
                 age_updates: bool = False):
        self.vocab = list(vocab)
        self.stoi = {t: i for i, t in enumerate(self.vocab)}
        if len(self.stoi) != len(self.vocab):
            raise ValueError("EHRTokenizer vocabulary holds duplicate tokens")
        self.quantiles = {k: np.asarray(v, dtype=np.float64) for k, v in quantiles.items()}
        self.time_edges, self.atc_levels = tuple(int(e) for e in time_edges), tuple(int(a) for a in atc_levels)
        self.age_bin_years, self.min_count = int(age_bin_years), int(min_count)
        self.names = dict(names or {})
        for key, value, allowed in (("long_gaps", long_gaps, LONG_GAPS), ("age_at", age_at, AGE_AT)):
            if value not in allowed:
                raise ValueError(f"EHR tokenizer {key}={value!r}: choose one of {list(allowed)}")
        self.long_gaps, self.age_at, self.age_updates = long_gaps, age_at, bool(age_updates)
        self.time_names = time_bin_names(self.time_edges, long_gaps)
        self._code_cache: dict[str, list[int]] = {}

    # ---- fitting --------------------------------------------------------------------------------
    @classmethod
    def fit(cls, timelines: Iterable[Timeline], *, min_count: int = 5, time_edges: Iterable[int] = ETHOS_TIME_EDGES,
            atc_levels: Iterable[int] = C.ATC_LEVELS, age_bin_years: int = 5, n_quantiles: int = 10,
            code_names: dict[str, str] | None = None, long_gaps: str = "repeat",
            age_at: str = "first_event", age_updates: bool = False) -> EHRTokenizer:
        """Learn the vocabulary and value deciles from (training) timelines only."""
        atc_levels, time_edges = tuple(atc_levels), tuple(time_edges)
        if list(time_edges) != sorted(set(time_edges)) or time_edges[0] <= 0:
            raise ValueError(f"time_edges must be increasing positive minutes, got {list(time_edges)}")
        counts: Counter = Counter()
        values: dict[str, list[float]] = {}
        raw_names: dict[str, str] = {}
        n = 0
        for tl in timelines:
            n += 1
            counts.update(sanitize(c) for c in tl.static)
            for code in set(tl.codes):
                raw_names.setdefault(code_parts(code, atc_levels)[-1], code)
            uniq, freq = np.unique(np.asarray(tl.codes, dtype=object), return_counts=True)
            for code, f in zip(uniq, freq):
                for part in code_parts(code, atc_levels):
                    counts[part] += int(f)
            for i in np.flatnonzero(np.isfinite(tl.values)):
                values.setdefault(tl.codes[i], []).append(float(tl.values[i]))
        if n == 0:
            raise ValueError("cannot fit an EHRTokenizer on zero timelines (is the train split empty?)")
        kept = sorted(t for t, c in counts.items() if c >= min_count)
        families = sorted({part_family(t) for t in counts} | {"ICD10", "ATC", "DRUG", "ICD9", "AGE"})
        ages = [f"AGE//{a}-{a + age_bin_years - 1}" for a in range(0, 90, age_bin_years)] + ["AGE//90+"]
        vocab = [START, END, UNK, DEATH, *time_bin_names(time_edges, long_gaps), *(f"Q{i}" for i in range(1, n_quantiles + 1)),
                 *ages, *(f"{f}//UNK" for f in families)]
        vocab += [t for t in kept if t not in set(vocab)]
        qs = np.linspace(0, 1, n_quantiles + 1)[1:-1]
        quantiles = {}
        for code, v in values.items():
            if len(v) >= min_count:
                quantiles[code] = np.quantile(np.asarray(v), qs).tolist()
        names = {}
        for tok in vocab:
            name = cls._lookup_name(tok, raw_names.get(tok), code_names or {})
            if name:
                names[tok] = name
        return cls(vocab, quantiles, time_edges=time_edges, atc_levels=atc_levels, age_bin_years=age_bin_years,
                   names=names, min_count=min_count, long_gaps=long_gaps, age_at=age_at, age_updates=age_updates)

    @staticmethod
    def _lookup_name(token: str, raw_code: str | None, code_names: dict[str, str]) -> str | None:
        fam, _, rest = token.partition("//")
        if fam == "ICD10" and rest != "UNK":
            return C.icd10_name(rest)
        if fam == "ICD10_CHAPTER":
            return C.icd10_name(rest)
        if fam == "ATC":
            return C.atc_names().get(rest)
        return code_names.get(raw_code) if raw_code else None

    # ---- encoding -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, token: str) -> int:
        try:
            return self.stoi[token]
        except KeyError:
            raise ValueError(f"token {token!r} is not in this EHR vocabulary of {self.vocab_size}") from None

    def _unk(self, part: str) -> int:
        return self.stoi.get(f"{part_family(part)}//UNK", self.stoi[UNK])

    def code_ids(self, code: str, problems: Problems | None = None) -> list[int]:
        """Token ids of one code, rare/unknown parts as their family UNK (repeats collapsed)."""
        cached = self._code_cache.get(code)
        if cached is not None and problems is None:
            return cached
        ids: list[int] = []
        for part in code_parts(code, self.atc_levels, problems):
            i = self.stoi.get(part)
            if i is None:
                i = self._unk(part)
                if problems is not None:
                    problems.add(f"rare_or_unknown_{part_family(part)}_to_UNK", 1, part)
            if not ids or ids[-1] != i:
                ids.append(i)
        self._code_cache[code] = ids
        return ids

    def value_id(self, code: str, value: float) -> int | None:
        cuts = self.quantiles.get(code)
        if cuts is None:
            return None
        return self.stoi[f"Q{int(np.searchsorted(cuts, value, side='right')) + 1}"]

    def age_token(self, years: float | None) -> str:
        if years is None:
            return "AGE//UNK"
        if years >= 90:
            return "AGE//90+"
        lo = int(max(years, 0) // self.age_bin_years) * self.age_bin_years
        return f"AGE//{lo}-{lo + self.age_bin_years - 1}"

    def age_id(self, birth: np.datetime64 | None, at: np.datetime64 | None) -> int:
        """The AGE token id of someone born at `birth` at time `at` (AGE//UNK without a birth)."""
        if birth is None or at is None:
            return self.stoi["AGE//UNK"]
        years = float((at - birth) / np.timedelta64(1, "D")) / 365.25
        return self.stoi.get(self.age_token(years), self.stoi["AGE//UNK"])

    def prefix_ids(self, tl: Timeline, has_events: bool = True, problems: Problems | None = None) -> list[int]:
        """`<TL_START>`, the static codes and the AGE token: what precedes the first timed event."""
        if (tl.birth is None or not has_events) and problems is not None:
            problems.add("subjects_without_MEDS_BIRTH_age_UNK", 1, f"subject {tl.subject_id}")
        ids = [self.stoi[START]]
        for code in tl.static:
            ids.extend(self.code_ids(code, problems))
        ids.append(self.age_id(tl.birth, tl.times[0] if has_events else None))
        return ids

    def encode_timeline(self, tl: Timeline, until: np.datetime64 | None = None,
                        problems: Problems | None = None) -> list[int]:
        """The token ids of a timeline; with `until`, only events at or before it and no end token
        (a prompt for prediction at that time)."""
        return self.encode_with_times(tl, until, problems)[0]

    def encode_with_times(self, tl: Timeline, until: np.datetime64 | None = None,
                          problems: Problems | None = None) -> tuple[list[int], np.ndarray, int]:
        """(ids, the time each token is known at, prefix length). An event's tokens carry its time;
        the interval tokens before event i carry event i-1's (the gap is what follows it); the
        prefix carries the first event's. A window starting at token k is "as of" times[k]."""
        n = len(tl.times) if until is None else int(np.searchsorted(tl.times, until, side="right"))
        ids = self.prefix_ids(tl, n > 0, problems)
        plen = len(ids)
        at: list[int] = [0] * plen  # index of the event each token is known at
        minutes = (tl.times[:n] - tl.times[0]).astype("timedelta64[us]").astype(np.int64) / MINUTE_US
        for i in range(n):
            if i:
                gap = minutes[i] - minutes[i - 1]
                if gap >= self.time_edges[0]:
                    gaps = gap_tokens(gap, self.time_edges, self.time_names, self.long_gaps)
                    ids.extend(self.stoi[t] for t in gaps)
                    at.extend([i - 1] * len(gaps))
            before = len(ids)
            if self.age_updates and i and tl.birth is not None:
                age = self.age_id(tl.birth, tl.times[i])
                if age != self.age_id(tl.birth, tl.times[i - 1]):
                    ids.append(age)  # a new age bin: said before the first event in it
            self._event_ids(tl, i, ids, problems)
            at.extend([i] * (len(ids) - before))
        if until is None:
            ids.append(self.stoi[END])
            at.append(max(n - 1, 0))
        times = tl.times[np.asarray(at, dtype=np.int64)] if n else np.full(len(ids), np.datetime64("NaT", "us"))
        return ids, times, plen

    def window_age_ids(self, tl: Timeline, times: np.ndarray) -> np.ndarray:
        """For each token, the AGE token id a window starting there restates (age_at="window"), or
        the timeline's own first-event age everywhere (age_at="first_event")."""
        if self.age_at == "first_event" or tl.birth is None:
            return np.full(len(times), self.age_id(tl.birth, tl.times[0] if len(tl.times) else None), dtype=np.int64)
        years = (times - tl.birth) / np.timedelta64(1, "D") / 365.25
        return np.array([self.stoi.get(self.age_token(float(y)), self.stoi["AGE//UNK"]) for y in years], dtype=np.int64)

    def _event_ids(self, tl: Timeline, i: int, ids: list[int], problems: Problems | None) -> None:
        """Append event i's code tokens and its value decile."""
        ids.extend(self.code_ids(tl.codes[i], problems))
        v = tl.values[i]
        if np.isfinite(v):
            q = self.value_id(tl.codes[i], v)
            if q is not None:
                ids.append(q)
            elif problems is not None:
                problems.add("values_of_codes_without_deciles_dropped", 1, tl.codes[i])

    @property
    def eot_token_id(self) -> int:
        """<TL_END> separates patients in the bins as <|endoftext|> separates documents: a sample
        started after it begins a new timeline, and generation stops at it."""
        return self.stoi[END]

    def encode(self, text: str) -> list[int]:
        return [self.token_id(t) for t in text.split()]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[int(i)] for i in ids)

    def readable(self, ids: Iterable[int]) -> str:
        """One line per timestamp: interval tokens start a new line; code names in brackets."""
        lines: list[list[str]] = [[]]
        for i in ids:
            tok = self.vocab[int(i)]
            if tok.startswith("TIME//") and lines[-1] and not lines[-1][-1].startswith("+"):
                lines.append([])
            shown = "+" + tok.removeprefix("TIME//") if tok.startswith("TIME//") else tok
            name = self.names.get(tok)
            lines[-1].append(f"{shown} [{name}]" if name else shown)
        return "\n".join("  ".join(line) for line in lines)

    # ---- what risk estimation needs -------------------------------------------------------------
    @cached_property
    def token_minutes(self) -> np.ndarray:
        """Minutes each token stands for: the bin's midpoint for interval tokens, the top bin its
        lower edge (the least it can mean: a longer gap repeats it or, bounded, says only "at
        least"), 0 for every other token."""
        out = np.zeros(self.vocab_size)
        edges = list(self.time_edges)
        for k, name in enumerate(self.time_names):
            out[self.stoi[name]] = (edges[k] + edges[k + 1]) / 2 if k + 1 < len(edges) else edges[-1]
        return out

    def ids_with_prefix(self, prefixes: Iterable[str]) -> list[int]:
        prefixes = tuple(sanitize(p) for p in prefixes)
        return [i for i, t in enumerate(self.vocab) if t.startswith(prefixes)]

    # ---- (de)serialization ----------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        return {"kind": "ehr", "vocab": self.vocab, "time_edges": list(self.time_edges),
                "atc_levels": list(self.atc_levels), "age_bin_years": self.age_bin_years,
                "min_count": self.min_count, "long_gaps": self.long_gaps, "age_at": self.age_at, "age_updates": self.age_updates, "quantiles": {k: v.tolist() for k, v in self.quantiles.items()},
                "names": self.names}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> EHRTokenizer:
        return cls(spec["vocab"], spec["quantiles"], time_edges=spec["time_edges"], atc_levels=spec["atc_levels"],
                   age_bin_years=spec["age_bin_years"], names=spec.get("names"), min_count=spec["min_count"],
                   long_gaps=spec.get("long_gaps", "repeat"), age_at=spec.get("age_at", "first_event"),
                   age_updates=spec.get("age_updates", False))
