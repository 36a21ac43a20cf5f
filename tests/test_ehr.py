"""EHR tokenizer, MEDS validation, prompts without leakage, trajectory sampling and metrics."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import simple_icd_10_cm as cm
import torch

from gptlab.ehr import metrics as M
from gptlab.ehr.codes import atc_names, icd9_to_icd10
from gptlab.ehr.meds import (
    Problems,
    Timeline,
    dataset_sha256,
    iter_timelines,
    read_dataset,
    read_labels,
    read_split,
)
from gptlab.ehr.prepare import read_index
from gptlab.ehr.risk import prompt_ids, sample_trajectories
from gptlab.ehr.synthetic import generate_cohort
from gptlab.ehr.tokenizer import ETHOS_TIME_EDGES, EHRTokenizer, code_parts, gap_tokens, time_bin_names
from gptlab.model import GPTConfig, KVCache
from gptlab.tokenizers import load_tokenizer, tokenizer_from_spec
from tests.conftest import tiny_gpt

LEVELS = (1, 3, 4, 5, 7)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return generate_cohort(tmp_path_factory.mktemp("meds") / "cohort", n_patients=120, seed=3)


@pytest.fixture(scope="module")
def splits(cohort):
    problems = Problems()
    return read_dataset(cohort, problems), problems


@pytest.fixture(scope="module")
def tok(cohort, splits):
    from gptlab.ehr.meds import read_code_names

    return EHRTokenizer.fit(iter_timelines(splits[0]["train"]), min_count=3, code_names=read_code_names(cohort))


# ---- hierarchy -----------------------------------------------------------------------------------
def test_icd10_hierarchy_parts_follow_the_cms_tree():
    parts = code_parts("DIAGNOSIS//ICD//10//E119", LEVELS)
    assert parts == ("ICD10_CHAPTER//4", "ICD10//E11", "ICD10//E11.9")
    assert cm.get_ancestors("E11.9") == ["E11", "E08-E13", "4"]  # chapter and category from the package
    assert code_parts("DIAGNOSIS//ICD//10//I10", LEVELS) == ("ICD10_CHAPTER//9", "ICD10//I10")  # a category


def test_icd9_is_mapped_to_icd10_before_splitting():
    assert icd9_to_icd10("4019") == "I10"  # CMS GEMs: essential hypertension
    assert code_parts("DIAGNOSIS//ICD//9//4019", LEVELS) == code_parts("DIAGNOSIS//ICD//10//I10", LEVELS)
    problems = Problems()
    assert code_parts("DIAGNOSIS//ICD//9//ZZZZ", LEVELS, problems) == ("ICD9//ZZZZ",)
    assert problems.counts["icd9_without_icd10_map_kept_whole"] == 1


def test_atc_levels_of_a_drug_and_whole_codes():
    parts = code_parts("MEDICATION//START//Enalapril", LEVELS)
    assert parts == ("MEDICATION//START", "ATC//C", "ATC//C09", "ATC//C09A", "ATC//C09AA", "ATC//C09AA02")
    assert atc_names()["C09AA02"] == "enalapril"
    assert code_parts("MEDICATION//Heparin//Administered", (3, 7)) == ("MEDICATION//Administered", "ATC//B01",
                                                                         "ATC//B01AB01")
    assert code_parts("MEDICATION//START//No Such Drug", LEVELS) == ("MEDICATION//START", "DRUG//No_Such_Drug")
    assert code_parts("HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", LEVELS) == (
        "HOSPITAL_ADMISSION//EW_EMER.//EMERGENCY_ROOM",)


# ---- time ------------------------------------------------------------------------------------------
def test_time_bin_edges():
    names = time_bin_names(ETHOS_TIME_EDGES)
    assert names[0] == "TIME//5m-15m" and names[2] == "TIME//1h-2h" and names[-2] == "TIME//3mt-6mt"
    assert names[-1] == "TIME//6mt" and names[9] == "TIME//2w-1mt"
    edges = ETHOS_TIME_EDGES
    assert gap_tokens(4.99, edges, names) == []
    assert gap_tokens(5, edges, names) == ["TIME//5m-15m"]  # lower edge belongs to the bin
    assert gap_tokens(14.99, edges, names) == ["TIME//5m-15m"]
    assert gap_tokens(15, edges, names) == ["TIME//15m-1h"]
    assert gap_tokens(1440, edges, names) == ["TIME//1d-3d"]
    assert gap_tokens(259199, edges, names) == ["TIME//3mt-6mt"]
    assert gap_tokens(259200, edges, names) == ["TIME//6mt"]
    assert gap_tokens(2 * 259200 + 1440, edges, names) == ["TIME//6mt", "TIME//6mt", "TIME//1d-3d"]


def test_token_minutes_are_bin_midpoints(tok):
    m = tok.token_minutes
    assert m[tok.token_id("TIME//5m-15m")] == 10 and m[tok.token_id("TIME//6mt")] == 259200
    assert m[tok.token_id("MEDS_DEATH")] == 0 and m[tok.token_id("Q3")] == 0


# ---- fit / encode / decode ------------------------------------------------------------------------
def test_fit_encode_decode_round_trip_and_json(tok, splits, tmp_path):
    tl = next(iter_timelines(splits[0]["held_out"]))
    ids = tok.encode_timeline(tl)
    assert ids[0] == tok.token_id("<TL_START>") and ids[-1] == tok.token_id("<TL_END>")
    text = tok.decode(ids)
    assert tok.encode(text) == ids
    assert text.split()[1].startswith("GENDER//") and text.split()[2].startswith("AGE//")
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(again, EHRTokenizer) and again.encode_timeline(tl) == ids
    assert tokenizer_from_spec(json.loads((tmp_path / "tok.json").read_text())).vocab == tok.vocab
    readable = tok.readable(ids)
    assert "Type 2 diabetes mellitus" in tok.readable(tok.encode("ICD10//E11")) and "\n+" in readable


def test_deciles_are_fitted_on_train_only(splits, tok):
    train = splits[0]["train"]
    code = "LAB//creatinine//mg/dL"
    mask = np.array([c == code for c in train["code"].to_pylist()])
    v = train["numeric_value"].to_numpy(zero_copy_only=False)[mask].astype(np.float64)
    np.testing.assert_allclose(tok.quantiles[code], np.quantile(v, np.linspace(0, 1, 11)[1:-1]))
    assert tok.value_id(code, v.min()) == tok.token_id("Q1") and tok.value_id(code, v.max()) == tok.token_id("Q10")


def test_rare_and_unknown_codes_become_family_unk_and_are_counted(tok):
    problems = Problems()
    ids = tok.code_ids("LAB//never_seen//mg", problems)
    assert [tok.vocab[i] for i in ids] == ["LAB//UNK"]
    ids = tok.code_ids("DIAGNOSIS//ICD//10//S72001A", problems)  # valid ICD-10, absent from train
    assert [tok.vocab[i] for i in ids] == ["ICD10_CHAPTER//UNK", "ICD10//UNK"]  # chapter 19 and S72 unseen
    assert [tok.vocab[i] for i in tok.code_ids("NEWFAMILY//X", problems)] == ["<UNK>"]
    assert problems.counts["rare_or_unknown_LAB_to_UNK"] == 1 and problems.counts["rare_or_unknown_ICD10_to_UNK"] >= 1


def test_min_count_decides_the_vocabulary(splits):
    low = EHRTokenizer.fit(iter_timelines(splits[0]["train"]), min_count=1)
    high = EHRTokenizer.fit(iter_timelines(splits[0]["train"]), min_count=10 ** 6)
    assert set(high.vocab) < set(low.vocab)
    assert "ICD10//E11.9" in low.vocab and "ICD10//E11.9" not in high.vocab and "ICD10//UNK" in high.vocab


# ---- prompts: nothing after the prediction time --------------------------------------------------
def _timeline(times, codes, values=None):
    t = np.array(times, dtype="datetime64[us]")
    return Timeline(7, ["GENDER//F"], np.datetime64("1960-01-01", "us"), t, list(codes),
                    np.array(values if values is not None else [np.nan] * len(codes), dtype=np.float64))


def test_prompt_holds_nothing_after_the_prediction_time(tok):
    times = ["2020-01-01T00:00", "2020-01-01T06:00", "2020-01-03T00:00", "2020-02-01T00:00"]
    tl = _timeline(times, ["HOSPITAL_ADMISSION//EMERGENCY", "LAB//creatinine//mg/dL",
                           "HOSPITAL_DISCHARGE//HOME", "MEDS_DEATH"], [np.nan, 1.1, np.nan, np.nan])
    cut = np.datetime64("2020-01-03T00:00", "us")
    prompt = prompt_ids(tok, tl, cut, 500)
    assert tok.vocab[prompt[-1]] == "HOSPITAL_DISCHARGE//HOME"  # an event exactly at the cut is history
    assert "MEDS_DEATH" not in tok.decode(prompt) and "<TL_END>" not in tok.decode(prompt)
    # whatever happens later, the prompt is the same
    other = _timeline(times[:3] + ["2020-01-03T00:01"], tl.codes[:3] + ["LAB//albumin//g/dL"], [np.nan, 1.1, np.nan, 9])
    assert prompt_ids(tok, other, cut, 500) == prompt
    # a long history keeps the demographic prefix and the newest events
    short = prompt_ids(tok, tl, cut, 6)
    assert len(short) == 6 and short[:3] == prompt[:3] and short[3:] == prompt[-3:]


# ---- bad MEDS input ------------------------------------------------------------------------------
def _write(path, **cols):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def _meds(tmp_path, train_rows, **overrides):
    """A minimal MEDS folder: `train_rows` (subject, time, code, value) + one good subject per other split."""
    def table(rows):
        return dict(subject_id=pa.array([r[0] for r in rows], pa.int64()),
                    time=pa.array([None if r[1] is None else np.datetime64(r[1], "us") for r in rows], pa.timestamp("us")),
                    code=pa.array([r[2] for r in rows], pa.string()),
                    numeric_value=pa.array([r[3] for r in rows], pa.float32()))
    good = lambda s: [(s, None, "GENDER//M", None), (s, "2000-01-01", "LAB//x", 1.0)]  # noqa: E731
    for split, rows in (("train", train_rows), ("tuning", good(90)), ("held_out", good(91))):
        _write(tmp_path / "data" / split / "0.parquet", **overrides.get(split, table(rows)))
    return tmp_path


def test_missing_column_names_the_file_and_the_columns(tmp_path):
    _write(tmp_path / "data" / "train" / "0.parquet", subject_id=[1], code=["X"])
    # numeric_value may be absent: MEDS makes it optional
    with pytest.raises(ValueError, match=r"0\.parquet: missing MEDS column\(s\) \['time'\]"):
        read_split(tmp_path, "train", Problems())


def test_null_codes_and_subjects_are_errors(tmp_path):
    _meds(tmp_path, [(1, "2000-01-01", None, None)])
    with pytest.raises(ValueError, match=r"1 row\(s\) with a null 'code'"):
        read_dataset(tmp_path, Problems())


def test_unsorted_rows_are_sorted_and_counted(tmp_path):
    _meds(tmp_path, [(1, "2000-01-02", "B", None), (1, "2000-01-01", "A", None), (1, None, "GENDER//F", None)])
    problems = Problems()
    tables = read_dataset(tmp_path, problems)
    assert tables["train"]["code"].to_pylist() == ["GENDER//F", "A", "B"]
    assert problems.counts["unsorted_rows_sorted"] == 2  # rows not at their sorted position


def test_null_times_are_static_prefix_rows_and_counted(tmp_path):
    _meds(tmp_path, [(1, None, "GENDER//F", None), (1, "2000-01-01", "A", None)])
    problems = Problems()
    tl = next(iter_timelines(read_dataset(tmp_path, problems)["train"], problems))
    assert tl.static == ["GENDER//F"] and tl.codes == ["A"]
    assert problems.counts["null_time_rows_as_static_prefix"] == 1


def test_empty_patients_are_counted_never_silently_dropped(tmp_path):
    _meds(tmp_path, [(1, None, "GENDER//F", None), (1, "1950-01-01", "MEDS_BIRTH", None),
                     (2, "2000-01-01", "A", None)])
    _write(tmp_path / "metadata" / "subject_splits.parquet", subject_id=[1, 2, 3, 90, 91],
           split=["train", "train", "train", "tuning", "held_out"])
    problems = Problems()
    tables = read_dataset(tmp_path, problems)
    kept = [tl.subject_id for tl in iter_timelines(tables["train"], problems)]
    assert kept == [2]
    assert problems.counts["subjects_without_timed_events_skipped"] == 1  # subject 1: static + birth only
    assert problems.counts["listed_subjects_without_events"] == 1  # subject 3: listed, no rows


def test_subject_in_two_splits_and_missing_split_are_errors(tmp_path):
    _meds(tmp_path, [(90, "2000-01-01", "A", None)])
    with pytest.raises(ValueError, match="subject 90 appears in both 'train' and 'tuning'"):
        read_dataset(tmp_path, Problems())
    (tmp_path / "data" / "held_out" / "0.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="split 'held_out'.*splits found"):
        read_dataset(tmp_path, Problems())


def test_label_file_needs_the_label_schema(tmp_path):
    _write(tmp_path / "labels.parquet", subject_id=[1], prediction_time=[np.datetime64("2000-01-01", "us")])
    with pytest.raises(ValueError, match=r"missing MEDS column\(s\) \['boolean_value'\]"):
        read_labels(tmp_path / "labels.parquet")


# ---- trajectory sampling -------------------------------------------------------------------------
class FixedNext(torch.nn.Module):
    """A stand-in GPT whose next-token distribution is always `probs` (KV-cache calls are no-ops)."""

    def __init__(self, probs: torch.Tensor, block_size: int = 64):
        super().__init__()
        self.config = GPTConfig(block_size=block_size, vocab_size=len(probs), n_layer=1, n_head=1, n_embd=4)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logits = probs.log()

    def forward_last(self, idx, pos=0, cache=None):
        return self.logits.expand(idx.size(0), -1)

    def new_kv_cache(self, batch_size, max_len=None):
        return KVCache([])  # no layers: nothing to cache


def test_trajectories_stop_at_outcome_stop_and_horizon(tok):
    V, death, end, six = tok.vocab_size, tok.token_id("MEDS_DEATH"), tok.token_id("<TL_END>"), tok.token_id("TIME//6mt")
    kw = dict(outcome_ids=[death], stop_ids=[end], token_minutes=tok.token_minutes, max_new_tokens=20)

    g = torch.Generator().manual_seed(0)
    r = sample_trajectories(FixedNext(probs_map(V, {death: 1.0})), [0, 1], n=8, horizon_minutes=1e9, generator=g, **kw)
    assert r.risk == 1.0 and r.outcomes == 8 and r.one_step == pytest.approx(1.0) and r.tokens == 8
    # only 6-month gaps: 2 × 180 d stays within 365 d, the 3rd token passes it; never an outcome
    r = sample_trajectories(FixedNext(probs_map(V, {six: 1.0})), [0], n=5, horizon_minutes=365 * 1440, generator=g, **kw)
    assert (r.risk, r.past_horizon, r.tokens) == (0.0, 5, 15)
    # 30% death, 70% end of timeline: risk ≈ 0.3 (binomial, n=4000: sd 0.007)
    r = sample_trajectories(FixedNext(probs_map(V, {death: 0.3, end: 0.7})), [0], n=4000, horizon_minutes=1e9,
                            generator=g, **kw)
    assert abs(r.risk - 0.3) < 0.03 and r.stopped + r.outcomes == 4000
    # a gap then death past the horizon does not count
    r = sample_trajectories(FixedNext(probs_map(V, {six: 0.5, death: 0.5})), [0], n=2000,
                            horizon_minutes=100 * 1440, generator=g, **kw)
    assert abs(r.risk - 0.5) < 0.04 and r.outcomes + r.past_horizon == 2000


def probs_map(V: int, p: dict[int, float]) -> torch.Tensor:
    t = torch.full((V,), 1e-12)
    for k, v in p.items():
        t[k] = v
    return t / t.sum()


def test_real_gpt_one_step_matches_the_uncached_forward(tok):
    torch.manual_seed(0)
    model = tiny_gpt(block_size=48, vocab_size=tok.vocab_size, n_embd=16).eval()
    prompt = tok.encode("<TL_START> GENDER//F AGE//60-64 HOSPITAL_ADMISSION//EMERGENCY")
    death = tok.token_id("MEDS_DEATH")
    r = sample_trajectories(model, prompt, n=6, outcome_ids=[death], stop_ids=[tok.token_id("<TL_END>")],
                            token_minutes=tok.token_minutes, horizon_minutes=1e9, max_new_tokens=40,
                            generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(torch.tensor([prompt]))[0][0, -1].softmax(-1)[death]
    assert r.one_step == pytest.approx(float(ref), rel=1e-5)
    assert r.outcomes + r.stopped + r.past_horizon + r.unfinished == 6
    with pytest.raises(ValueError, match="exceeds block_size"):
        sample_trajectories(model, prompt, n=2, outcome_ids=[death], stop_ids=[], token_minutes=tok.token_minutes,
                            horizon_minutes=1, max_new_tokens=48)
    bidirectional = tiny_gpt(block_size=48, vocab_size=tok.vocab_size, n_embd=16, causal=False).eval()
    with pytest.raises(ValueError, match="causal model"):  # its cached keys would go stale
        sample_trajectories(bidirectional, prompt, n=2, outcome_ids=[death], stop_ids=[],
                            token_minutes=tok.token_minutes, horizon_minutes=1, max_new_tokens=8)


# ---- metrics -------------------------------------------------------------------------------------
def brute_auroc(y, s):
    pos, neg = s[y], s[~y]
    return ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))


def brute_average_precision(y, s):
    """Σ over each distinct threshold t (descending) of (recall(t) - recall(previous)) · precision(t)."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = (pred & y).sum()
        recall, precision = tp / y.sum(), tp / pred.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_and_auprc_equal_brute_force_references_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300) + 0.5 * y, 1)  # rounding makes many ties
    assert M.auroc(y, s) == pytest.approx(brute_auroc(y, s), abs=1e-12)
    assert M.auprc(y, s) == pytest.approx(brute_average_precision(y, s), abs=1e-12)
    assert M.auroc(y, -s) == pytest.approx(1 - M.auroc(y, s))


def test_bootstrap_ci_and_calibration():
    rng = np.random.default_rng(0)
    p = rng.random(400)
    y = rng.random(400) < p
    lo, hi = M.bootstrap_ci(M.auroc, y, p, n_boot=300)
    assert lo < M.auroc(y, p) < hi and hi - lo < 0.15
    bins = M.calibration_bins(y, p, 10)
    assert sum(b["n"] for b in bins) == 400 and all(abs(b["predicted"] - b["observed"]) < 0.2 for b in bins)
    assert np.isnan(M.auroc(np.zeros(5, bool), np.arange(5.0)))
    with pytest.raises(ValueError, match="NaN"):
        M.auroc(y, np.full(400, np.nan))


def test_bootstrap_over_patients_resamples_whole_groups():
    rng = np.random.default_rng(1)
    p = rng.random(300)
    y = rng.random(300) < p
    # one row per group: the same draws as the row bootstrap
    assert M.bootstrap_ci(M.auroc, y, p, 200, 3, groups=np.arange(300) * 3 + 7) == M.bootstrap_ci(M.auroc, y, p, 200, 3)
    # every patient seen 4 times with the same label and score (perfectly correlated predictions)
    k, sid = 4, np.repeat(np.arange(300) + 1000, 4)
    yk, pk = np.repeat(y, k), np.repeat(p, k)
    seen = []

    def spy(yy, ss):
        seen.append(np.unique(ss, return_counts=True)[1])  # scores are distinct per patient
        return M.auroc(yy, ss)

    lo, hi = M.bootstrap_ci(spy, yk, pk, 300, 0, groups=sid)
    assert all((c % k == 0).all() for c in seen)  # a drawn patient brings all its rows
    row_lo, row_hi = M.bootstrap_ci(M.auroc, yk, pk, 300, 0)
    one_lo, one_hi = M.bootstrap_ci(M.auroc, y, p, 300, 0)
    assert row_hi - row_lo < 0.7 * (one_hi - one_lo)  # rows as if independent: too narrow
    assert (hi - lo) == pytest.approx(one_hi - one_lo, rel=0.25)  # patients: the width of 300 predictions
    assert M.summarize(yk, pk, 100, 0, groups=sid)["auroc_ci"] == list(M.bootstrap_ci(M.auroc, yk, pk, 100, 0, groups=sid))
    with pytest.raises(ValueError, match="groups"):
        M.bootstrap_ci(M.auroc, y, p, 10, groups=np.arange(5))


def test_prepare_writes_bins_and_a_patient_index(cohort, tmp_path):
    from gptlab.ehr.prepare import ensure_prepared_meds

    cfg = {"path": str(cohort), "tokenizer": {"kind": "ehr", "min_count": 3}}
    meta = ensure_prepared_meds(cfg, tmp_path)
    ids = np.fromfile(tmp_path / "test.bin", dtype=meta["dtype"])
    index = read_index(tmp_path, "test")
    tok = tokenizer_from_spec(meta["tokenizer"])
    assert index[0, 1] == 0 and index[-1, 2] == len(ids) and (index[1:, 1] == index[:-1, 2]).all()
    assert all(ids[a] == tok.token_id("<TL_START>") and ids[b - 1] == tok.token_id("<TL_END>") for _, a, b, _ in index)
    assert meta["test_subjects"] == len(index) == 24 and "null_time_rows_as_static_prefix" in meta["problems"]
    # prefix_end: the prefix is <TL_START>, the static codes, then AGE; the first timed event follows
    assert all(tok.decode([ids[p - 1]]).startswith("AGE//") and not tok.decode([ids[p]]).startswith(("AGE//", "GENDER//"))
               for _, _, _, p in index)
    assert ensure_prepared_meds(cfg, tmp_path)["source_sha256"] == meta["source_sha256"]  # up to date: reused
    # a bin cut short (an interrupted copy, a full disk) is prepared again, never trained on
    full = (tmp_path / "val.bin").read_bytes()
    (tmp_path / "val.bin").write_bytes(full[: len(full) // 2])
    ensure_prepared_meds(cfg, tmp_path)
    assert (tmp_path / "val.bin").read_bytes() == full
    # the tokenizer is fitted on train only: rewriting every held-out value changes nothing in it
    import shutil

    copy = shutil.copytree(cohort, tmp_path / "copy")
    held = pq.read_table(copy / "data" / "held_out" / "0.parquet")
    held = held.set_column(3, "numeric_value", pa.array(np.full(held.num_rows, 1e6, dtype=np.float32)))
    pq.write_table(held, copy / "data" / "held_out" / "0.parquet")
    again = ensure_prepared_meds({**cfg, "path": str(copy)}, tmp_path / "prep2")
    assert again["source_sha256"] != meta["source_sha256"] and again["tokenizer"] == meta["tokenizer"]
    assert np.fromfile(tmp_path / "prep2" / "train.bin", dtype=meta["dtype"]).tolist() == \
        np.fromfile(tmp_path / "train.bin", dtype=meta["dtype"]).tolist()


@pytest.mark.parametrize("pack", [False, True])
def test_patient_windows_carry_the_patients_prefix(cohort, tmp_path, pack):
    from gptlab.ehr.prepare import ensure_prepared_meds
    from gptlab.ehr.windows import PatientWindows

    meta = ensure_prepared_meds({"path": str(cohort), "tokenizer": {"kind": "ehr", "min_count": 3}}, tmp_path)
    ids, index = np.fromfile(tmp_path / "train.bin", dtype=meta["dtype"]), read_index(tmp_path, "train")
    T, start_id = 48, tokenizer_from_spec(meta["tokenizer"]).token_id("<TL_START>")
    windows = PatientWindows(ids, index, T, 16, seed=7, pack=pack)
    for n in (0, 5):
        x, y = windows.batch(n)
        assert x.shape == y.shape == (16, T)
        x2, y2 = PatientWindows(ids, index, T, 16, seed=7, start=n, pack=pack).batch(n)
        assert torch.equal(x, x2) and torch.equal(y, y2)  # batch n depends on n only: exact resume
        for row, (k, o) in enumerate(zip(*windows.draw(n))):
            _, begin, end, prefix_end = index[k]
            assert prefix_end <= o < end - 1
            prefix = ids[begin:prefix_end].tolist()
            assert prefix[0] == start_id and x[row, 0] == start_id
            stop = len(ids) if pack else end  # packed: the next patients follow, whole; else padding
            rest = ids[o : min(o + T + 1 - len(prefix), stop)].tolist()
            chunk = prefix + rest
            assert x[row, : len(chunk) - 1].tolist() == chunk[:-1]
            want = chunk[1:] + [-1] * (T + 1 - len(chunk))
            if o != prefix_end:
                want[len(prefix) - 1] = -1  # AGE → timeline[o] is not scored
            assert y[row].tolist() == want
            if not pack:
                assert o + len(rest) <= end  # nothing of another patient
    assert not torch.equal(windows.batch(0)[0], windows.batch(1)[0])
    # data.windows names the factory; GPTDataModule then streams these batches for training
    from gptlab.data import GPTDataModule
    from gptlab.ehr.windows import packed_patient_windows, patient_windows

    dm = GPTDataModule(tmp_path, T, 16, val_batches=3, seed=7,
                       windows=packed_patient_windows if pack else patient_windows)
    dm.setup()
    assert torch.equal(next(iter(dm.train_dataloader()))[1], windows.batch(0)[1])
    # validation scores the same kind of windows, over the val split's patients, the same each time
    val_ids = np.fromfile(tmp_path / "val.bin", dtype=meta["dtype"])
    val_windows = PatientWindows(val_ids, read_index(tmp_path, "val"), T, 16, seed=7, pack=pack)
    first, second = list(dm.val_dataloader()), list(dm.val_dataloader())
    assert len(first) == 3 and (first[0][0][:, 0] == start_id).all()
    for n, ((x, y), (x2, y2)) in enumerate(zip(first, second)):
        want = val_windows.batch(n)
        assert torch.equal(x, want[0]) and torch.equal(y, want[1]) and torch.equal(x, x2) and torch.equal(y, y2)


# ---- issue 16: bounded gaps, age at the cut, censoring, the count baseline, problems per split --------
BOUNDED_EDGES = (*ETHOS_TIME_EDGES, 525600, 1051200, 2628000)  # … 6mt 1y 2y 5y, as conf/data/tokenizer/ehr.yaml
YEAR = 525600


def test_bounded_gaps_cost_at_most_one_token():
    names = time_bin_names(BOUNDED_EDGES, "bounded")
    assert names[-4:] == ["TIME//6mt-1y", "TIME//1y-2y", "TIME//2y-5y", "TIME//5y+"]
    for gap, want in ((4.99, []), (10, ["TIME//5m-15m"]), (200 * 1440, ["TIME//6mt-1y"]), (1.5 * YEAR, ["TIME//1y-2y"]),
                      (3 * YEAR, ["TIME//2y-5y"]), (5 * YEAR, ["TIME//5y+"]), (40 * YEAR, ["TIME//5y+"])):
        assert gap_tokens(gap, BOUNDED_EDGES, names, "bounded") == want, gap
    # the old layout repeats the top token: 40 years are 81 `TIME//6mt` and the remainder's bin
    assert len(gap_tokens(40 * YEAR, ETHOS_TIME_EDGES, time_bin_names(ETHOS_TIME_EDGES))) == 82


@pytest.fixture(scope="module")
def tok16(splits):
    return EHRTokenizer.fit(iter_timelines(splits[0]["train"]), min_count=3, time_edges=BOUNDED_EDGES,
                            long_gaps="bounded", age_at="window")


def test_horizon_sums_the_bounded_gap_tokens(tok16):
    V, death = tok16.vocab_size, tok16.token_id("MEDS_DEATH")
    m = tok16.token_minutes
    assert m[tok16.token_id("TIME//6mt-1y")] == (259200 + YEAR) / 2 and m[tok16.token_id("TIME//5y+")] == 5 * YEAR
    kw = dict(outcome_ids=[death], stop_ids=[], token_minutes=m, max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    # 3mt-6mt (135 d) then death: inside 365 d; 6mt-1y (270 d) twice: 540 d, past it; one 1y-2y: past it at once
    for gap, horizon, outcome in (("TIME//3mt-6mt", 365, True), ("TIME//6mt-1y", 300, True), ("TIME//1y-2y", 365, False)):
        g = tok16.token_id(gap)
        r = sample_trajectories(FixedNext(probs_map(V, {g: 0.5, death: 0.5})), [0], n=400,
                                horizon_minutes=horizon * 1440, **kw)
        assert (r.outcomes > 0) and (r.past_horizon > 0) and r.outcomes + r.past_horizon == 400
        # a death is counted only while the summed gaps are within the horizon: P = Σ_k 0.5^(k+1) over gaps k that fit
        fits = int(horizon * 1440 // m[g])
        assert abs(r.risk - (1 - 0.5 ** (fits + 1))) < 0.06, (gap, r.risk)
        assert outcome or fits == 0


def _life(years: int) -> Timeline:
    """A record from age 2 for `years` years: a visit every year, a stay at the end."""
    birth = np.datetime64("1950-03-01T00:00", "us")
    times = [birth + np.timedelta64(int((2 + k) * 365.25 * 1440), "m") for k in range(years)]
    return Timeline(9, ["GENDER//F"], birth, np.array(times, dtype="datetime64[us]"),
                    ["LAB//creatinine//mg/dL"] * years, np.full(years, 1.0))


def test_a_40_year_record_cut_near_its_end_says_the_age_at_the_cut(tok16, tok):
    tl = _life(40)  # ages 2 … 41
    cut = tl.times[-1]
    full = tok16.encode_timeline(tl, until=cut)
    prompt = prompt_ids(tok16, tl, cut, 12)
    assert tok16.decode([full[2]]) == "AGE//0-4"  # the whole timeline starts in childhood
    assert len(prompt) == 12 and tok16.decode(prompt[:3]) == "<TL_START> GENDER//F AGE//35-39"
    assert prompt[3:] == full[-9:]  # the newest tokens: the first kept one is known at age ~38.6
    # the tokenizer of the figures before issue 16 keeps the first-event age (old checkpoints read the same)
    assert tok.decode([prompt_ids(tok, tl, cut, 12)[2]]) == "AGE//0-4"
    # every training window restates the age at its first timed token
    ids, times, plen = tok16.encode_with_times(tl)
    ages = tok16.window_age_ids(tl, times)
    from gptlab.ehr.windows import PatientWindows

    windows = PatientWindows(np.asarray(ids), np.array([[9, 0, len(ids), plen]]), 16, 1, seed=0, ages=ages)
    for o in (plen, len(ids) - 10, len(ids) - 3):
        x, _ = windows.window(0, o)
        years = (times[o] - tl.birth) / np.timedelta64(1, "D") / 365.25
        assert tok16.vocab[x[plen - 1]] == tok16.age_token(float(years)), o
    assert tok16.vocab[windows.window(0, len(ids) - 3)[0][plen - 1]] == "AGE//40-44"


def test_age_updates_say_each_new_age_bin_inside_the_timeline(splits):
    tok = EHRTokenizer.fit(iter_timelines(splits[0]["train"]), min_count=3, time_edges=BOUNDED_EDGES,
                           long_gaps="bounded", age_at="window", age_updates=True)
    tl = _life(40)  # ages 2 … 41: bins 0-4 (prefix), then 5-9 … 40-44 said once each, before their first visit
    ids = tok.encode_timeline(tl)
    ages = [tok.vocab[i] for i in ids if tok.vocab[i].startswith("AGE//")]
    assert ages == [f"AGE//{a}-{a + 4}" for a in range(0, 45, 5)]
    k = ids.index(tok.token_id("AGE//40-44"))
    assert tok.vocab[ids[k + 1]] == "LAB//creatinine//mg/dL" and tok.vocab[ids[k - 1]].startswith("TIME//")
    # a prompt of the newest tokens over decades of sparse visits still ends knowing the current bin
    prompt = prompt_ids(tok, tl, tl.times[-1], 20)
    assert [tok.vocab[i] for i in prompt if tok.vocab[i].startswith("AGE//")][-1] == "AGE//40-44"
    assert tokenizer_from_spec(tok.to_spec()).encode_timeline(tl) == ids


def test_censoring_estimators_against_a_known_risk():
    """Event times ~ Exp, independent censoring ~ Uniform: KM recovers P(T ≤ H); naive (censored =
    survivor) is biased low, complete-case (censored dropped) high."""
    from gptlab.ehr.risk import CENSORED, HORIZON, OUTCOME, STOP, estimate_risk

    rng = np.random.default_rng(0)
    n, H = 20000, 365.0
    t, c = rng.exponential(500, n), rng.uniform(0, 2 * H, n)
    truth = 1 - np.exp(-H / 500)
    kind = np.where((t <= c) & (t <= H), OUTCOME, np.where(c < np.minimum(t, H), CENSORED, HORIZON))
    when = np.where(kind == OUTCOME, t, np.where(kind == CENSORED, c, H))
    km, naive, cc = (estimate_risk(kind, when, e) for e in ("km", "naive", "complete_case"))
    assert abs(km - truth) < 0.015 and naive < truth - 0.05 and cc > truth + 0.02
    # without censoring all three agree; a stop (a competing end) is a "no" for all three
    kind2 = np.array([OUTCOME, STOP, HORIZON, HORIZON])
    assert {estimate_risk(kind2, np.array([5.0, 3, 9, 9]), e) for e in ("km", "naive", "complete_case")} == {0.25}
    with pytest.raises(ValueError, match="risk estimator"):
        estimate_risk(kind2, np.zeros(4), "mean")


def test_trajectories_report_how_each_ended(tok):
    from gptlab.ehr.risk import CENSORED, OUTCOME

    V, death, end = tok.vocab_size, tok.token_id("MEDS_DEATH"), tok.token_id("<TL_END>")
    r = sample_trajectories(FixedNext(probs_map(V, {death: 0.4, end: 0.6})), [0], n=500, outcome_ids=[death],
                            stop_ids=[], censor_ids=[end], token_minutes=tok.token_minutes, horizon_minutes=1e9,
                            max_new_tokens=5, generator=torch.Generator().manual_seed(1))
    assert r.censored == int((r.end_kind == CENSORED).sum()) > 0 and r.stopped == 0
    assert r.outcomes == int((r.end_kind == OUTCOME).sum()) and r.outcomes + r.censored == 500


def test_decoder_rows_dropped_and_fanned_out_match_the_uncached_forward():
    """Dropping finished rows keeps the first rows of the cache buffers (no reallocation); the
    kept rows' logits must stay those of a plain forward over their whole sequence."""
    from gptlab.generation import Decoder

    model = tiny_gpt(seed=0, block_size=32).eval()
    seq = torch.randint(0, 50, (6, 20), generator=torch.Generator().manual_seed(0))
    decoder = Decoder(model, 6, max_len=20)
    decoder(seq[:, :8])
    rows = torch.arange(6)
    for t, keep in ((8, [0, 2, 3, 5]), (9, [1, 3]), (10, [0, 0, 1]), (11, [2, 1, 0]), (12, [1])):
        keep = torch.tensor(keep)
        decoder.reorder(keep)
        rows = rows[keep]
        got = decoder(seq[rows, : t + 1])
        with torch.no_grad():
            want = model.forward_last(seq[rows, : t + 1]).float()
        assert torch.allclose(got, want, atol=1e-5), t


def test_ragged_decoder_rows_match_the_uncached_forward():
    """Prompts of different lengths in one batch: each row at its own position, fanned out, finished
    rows dropped; every row's logits must stay those of a plain forward over its own whole sequence
    (no padding is fed, nothing of another row is read)."""
    from gptlab.generation import RaggedDecoder

    model = tiny_gpt(seed=0, block_size=32).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, 50, (L + 6,), generator=g) for L in (3, 9, 5)]
    decoder = RaggedDecoder(model, [s[:L].tolist() for s, L in zip(seqs, (3, 9, 5))], max_new_tokens=6)
    with torch.no_grad():
        for s, L, got in zip(seqs, (3, 9, 5), decoder.first):
            assert torch.allclose(got, model.forward_last(s[None, :L])[0].float(), atol=1e-5)
    rows = torch.tensor([0, 0, 1, 1, 2, 2])  # each prompt fanned out to 2 rows
    decoder.reorder(rows)
    for t, keep in ((0, None), (1, [0, 2, 3, 5]), (2, [3, 0, 1]), (3, [1, 2]), (4, [1])):
        if keep is not None:
            keep = torch.tensor(keep)
            decoder.reorder(keep)
            rows = rows[keep]
        lengths = torch.tensor([3, 9, 5])[rows]
        got = decoder(torch.stack([seqs[r][lengths[i] + t] for i, r in enumerate(rows.tolist())]))
        with torch.no_grad():
            want = torch.cat([model.forward_last(seqs[r][None, : lengths[i] + t + 1])
                              for i, r in enumerate(rows.tolist())]).float()
        assert torch.allclose(got, want, atol=1e-5), t
    with pytest.raises(ValueError, match="block_size"):
        RaggedDecoder(model, [[1] * 30], max_new_tokens=3)


def test_prompts_sampled_together_score_as_alone(tok):
    """sample_trajectories_batch runs several prompts' rows (of different lengths) as one batch: each
    prompt's one-step score is its own uncached forward's, and its rows come back in its own slice
    with its own risk (a mix-up of prompts shows as the other prompt's risk)."""
    from gptlab.ehr.risk import sample_trajectories_batch

    death, end = tok.token_id("MEDS_DEATH"), tok.token_id("<TL_END>")
    model = tiny_gpt(seed=3, block_size=64, vocab_size=tok.vocab_size, n_embd=16).eval()
    with torch.no_grad():  # make death likely after one particular token, so two prompts' risks differ
        model.transformer.wte.weight[tok.token_id("HOSPITAL_ADMISSION//EMERGENCY")] *= 0
        model.lm_head.weight[death] = model.transformer.wte.weight[tok.token_id("GENDER//M")] * 40
    prompts = [tok.encode("<TL_START> GENDER//F AGE//60-64 HOSPITAL_ADMISSION//EMERGENCY"),
               tok.encode("<TL_START> GENDER//M AGE//60-64 GENDER//M"),
               tok.encode("<TL_START> GENDER//F AGE//80-84 HOSPITAL_ADMISSION//EMERGENCY GENDER//F GENDER//F"),
               tok.encode("<TL_START> GENDER//M")]
    kw = dict(outcome_ids=[death], stop_ids=[], censor_ids=[end], token_minutes=tok.token_minutes,
              horizon_minutes=365 * 1440, max_new_tokens=8, hazard=True)
    together = sample_trajectories_batch(model, prompts, n=1000, generator=torch.Generator().manual_seed(0), **kw)
    alone = [sample_trajectories(model, p, n=1000, generator=torch.Generator().manual_seed(1), **kw) for p in prompts]
    for prompt, a, b in zip(prompts, together, alone):
        with torch.no_grad():
            ref = float(model(torch.tensor([prompt]))[0][0, -1].softmax(-1)[death])
        assert a.one_step == pytest.approx(ref, rel=1e-5) and b.one_step == pytest.approx(ref, rel=1e-5)
        assert len(a.end_kind) == len(a.row_risk) == 1000 and a.tokens > 0
        assert abs(a.row_risk.mean() - b.row_risk.mean()) < 0.03
    assert abs(alone[0].row_risk.mean() - alone[1].row_risk.mean()) > 0.1  # the prompts are told apart
    with pytest.raises(ValueError, match="block_size"):
        sample_trajectories_batch(model, [prompts[0], [0] * 60], n=2, **kw)


def test_hazard_sampling_is_unbiased_with_less_noise(tok):
    """Each step: death 0.1, a 6-month gap 0.3, a timeless code 0.4, <TL_END> 0.2 (censoring). With
    censoring removed, death comes before the 3rd gap (which passes 365 d) with probability
    1 − (0.3 / (0.3 + 0.1))³ = 0.578125 exactly. Hazard sampling (outcome/censor never drawn, their
    probability accumulated) hits it with per-row spread below the 0/1 draws'. km on drawn
    trajectories cannot: its clock is minutes, and a row censored between two timeless tokens ties
    with every outcome of that minute (it stays "at risk" for them), so it runs low here."""
    from gptlab.ehr.risk import estimate_risk

    V, death, end, six = tok.vocab_size, tok.token_id("MEDS_DEATH"), tok.token_id("<TL_END>"), tok.token_id("TIME//6mt")
    code = next(i for i in range(V) if tok.token_minutes[i] == 0 and i not in (death, end))
    model = FixedNext(probs_map(V, {death: 0.1, six: 0.3, code: 0.4, end: 0.2}), block_size=256)
    kw = dict(outcome_ids=[death], stop_ids=[], censor_ids=[end], token_minutes=tok.token_minutes,
              horizon_minutes=365 * 1440, max_new_tokens=200)
    truth = 1 - 0.75 ** 3
    r = sample_trajectories(model, [0], n=2000, hazard=True, generator=torch.Generator().manual_seed(0), **kw)
    assert r.outcomes == 0 and r.censored == 0 and r.past_horizon == 2000  # never drawn: every row reaches the horizon
    assert abs(r.row_risk.mean() - truth) < 0.01 and r.row_risk.std() < 0.6 * np.sqrt(truth * (1 - truth))
    drawn = sample_trajectories(model, [0], n=4000, generator=torch.Generator().manual_seed(1), **kw)
    assert estimate_risk(drawn.end_kind, drawn.end_minutes, "km") < truth - 0.1
    with pytest.raises(ValueError, match="hazard=True"):
        estimate_risk(drawn.end_kind, drawn.end_minutes, "hazard")
    # all the mass on the outcome: risk 1, and the row still goes on without drawing it
    r = sample_trajectories(FixedNext(probs_map(V, {death: 1.0}), block_size=256), [0], n=3, hazard=True,
                            generator=torch.Generator().manual_seed(0), **{**kw, "max_new_tokens": 4})
    assert np.allclose(r.row_risk, 1.0) and r.outcomes == 0


def test_token_budget_is_a_quantile_of_the_tokens_in_the_horizon(tok16):
    """The budget replays the sampler's stopping rule on the record after each prompt (the prompt
    as prompt_ids' encoder cuts it): the token whose summed minutes pass the horizon, or the first
    outcome/stop token, inclusive."""
    from gptlab.ehr.risk import horizon_token_budget

    tl = _life(40)  # one visit (2 tokens + a gap token) a year
    sids, times = np.array([9] * 5), tl.times[[5, 10, 15, 20, 25]]
    horizon = 3 * 365.25 * 1440
    ids = np.asarray(tok16.encode_with_times(tl)[0])
    lab = tok16.token_id("LAB//creatinine//mg/dL")

    def replay(t, end_ids):
        after = ids[len(tok16.encode_with_times(tl, until=t)[0]):]
        elapsed = np.cumsum(tok16.token_minutes[after])
        for j, token in enumerate(after):
            if elapsed[j] > horizon or token in end_ids:
                return j + 1
        return len(after)

    need, n = horizon_token_budget(tok16, {9: tl}, sids, times, horizon, 1.0)
    assert n == 5 and need == max(replay(t, ()) for t in times) and 7 <= need <= 12
    # sampling stops at the task's outcome: only the tokens up to the first one count (here the
    # next visit's gap token, with age_updates an AGE token, then the lab), not the whole horizon
    need_end, _ = horizon_token_budget(tok16, {9: tl}, sids, times, horizon, 1.0, end_ids=[lab])
    assert need_end == max(replay(t, (lab,)) for t in times) and 2 <= need_end <= 3


def test_count_baseline_features_and_fit(tok16, splits):
    from gptlab.ehr.baseline import count_features, fit_count_baseline

    tl = _life(40)
    cut = tl.times[20]
    x = count_features(tok16, tl, cut)
    ids = tok16.encode_timeline(tl, until=cut)
    assert x[:-1].sum() == len(ids) and x[tok16.token_id("LAB//creatinine//mg/dL")] == 21
    assert x[-1] == pytest.approx(22.0, abs=0.01)  # age at the prediction time, not at the first event
    # the batched matrix (each timeline encoded once) equals count_features label by label
    from gptlab.ehr.baseline import feature_matrix

    cuts = [tl.times[0], tl.times[0] + np.timedelta64(3, "D"), tl.times[7], cut, tl.times[-1] + np.timedelta64(9, "D")]
    np.testing.assert_array_equal(feature_matrix(tok16, {9: tl}, np.full(5, 9), np.array(cuts)),
                                  np.stack([count_features(tok16, tl, c) for c in cuts]))
    # a label that follows one count: cross-validated over patients, the fit ranks it
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (600, 6)).astype(float)
    y = rng.random(600) < 1 / (1 + np.exp(-(X[:, 0] - 2)))
    groups = np.repeat(np.arange(200), 3)
    fitted = fit_count_baseline(X, y, groups)
    from sklearn.linear_model import LogisticRegression

    assert fitted.C in (0.001, 0.01, 0.1, 1.0, 10.0) and M.auroc(y, fitted.predict(X)) > 0.75
    ref = LogisticRegression(C=fitted.C, max_iter=2000).fit((X - X.mean(0)) / X.std(0), y)  # the same model, by hand
    np.testing.assert_allclose(fitted.predict(X), ref.predict_proba((X - X.mean(0)) / X.std(0))[:, 1], atol=1e-3)
    with pytest.raises(ValueError, match="both classes"):
        fit_count_baseline(X, np.zeros(600, bool), groups)
    # few positives (the MIMIC demo's mortality tasks): 3 positive patients of 200 → 3 stratified folds,
    # each holding one, so every fold's AUROC exists
    few = np.zeros(600, bool)
    few[[0, 30, 300]] = True
    assert np.isfinite(fit_count_baseline(X, few, groups).predict(X)).all()
    with pytest.raises(ValueError, match="1 positive patients"):
        fit_count_baseline(X, np.eye(1, 600, 0, dtype=bool)[0], groups)


def test_paired_difference_resamples_both_scores_together():
    rng = np.random.default_rng(2)
    p = rng.random(400)
    y = rng.random(400) < p
    noisy = p + rng.normal(0, 0.3, 400)
    d = M.paired_difference(M.auroc, y, p, noisy, 300, 0, groups=np.arange(400) // 2)
    assert d["difference"] == pytest.approx(M.auroc(y, p) - M.auroc(y, noisy)) and d["ci"][0] < d["difference"] < d["ci"][1]
    assert M.paired_difference(M.auroc, y, p, p, 100, 0)["ci"] == [0.0, 0.0]  # the same score: no spread at all


def test_problems_are_counted_per_split(tmp_path):
    from gptlab.ehr.prepare import prepare_meds

    rows = [(s, t, "LAB//x", 1.0) for s in (1, 2, 3) for t in ("2000-01-01", "2000-02-01", "2000-03-01")]
    _meds(tmp_path / "m", rows, held_out=dict(
        subject_id=pa.array([91, 91], pa.int64()), time=pa.array([np.datetime64("2000-01-01", "us")] * 2, pa.timestamp("us")),
        code=pa.array(["LAB//x", "LAB//never_in_train"], pa.string()), numeric_value=pa.array([1.0, None], pa.float32())))
    meta = prepare_meds({"path": str(tmp_path / "m"), "tokenizer": {"kind": "ehr", "min_count": 2}}, tmp_path / "p")
    by = meta["problems_by_split"]
    assert by["held_out"]["rare_or_unknown_LAB_to_UNK"]["count"] == 1 and "rare_or_unknown_LAB_to_UNK" not in by["train"]
    assert meta["rows_by_split"]["held_out"] == 2 and meta["problems"]["rare_or_unknown_LAB_to_UNK"]["count"] == 1
    from gptlab.ehr.prepare import problem_lines

    assert "held_out: rare_or_unknown_LAB_to_UNK: 1, 50.00% of 2 rows" in "\n".join(problem_lines(by, meta["rows_by_split"]))


def test_lifelong_cohort_starts_in_childhood_and_has_two_exact_tasks(tmp_path):
    from gptlab.ehr.synthetic import generate_cohort, readmission_probability

    out = generate_cohort(tmp_path / "life", n_patients=400, seed=1, shape="lifelong")
    tables = read_dataset(out, Problems())
    tls = list(iter_timelines(tables["train"]))
    first_age = np.array([(tl.times[0] - tl.birth) / np.timedelta64(1, "D") / 365.25 for tl in tls])
    span = np.array([(tl.times[-1] - tl.times[0]) / np.timedelta64(1, "D") / 365.25 for tl in tls])
    gaps = np.concatenate([np.diff(tl.times) / np.timedelta64(1, "D") / 365.25 for tl in tls])
    assert first_age.max() < 15.01 and np.median(span) > 30 and (gaps > 5).sum() > 0.1 * len(tls)
    assert any(c.startswith("IMMUNIZATION//CVX//") for c in tls[0].codes)
    for task in ("death_365d", "readmission_30d"):
        labels = pq.read_table(out / "tasks" / f"{task}.parquet").to_pandas()
        oracle = pq.read_table(out / "tasks" / f"{task}_oracle.parquet").to_pandas()
        assert (labels.prediction_time.values == oracle.prediction_time.values).all()
        # labels are Bernoulli(oracle): observed and expected positives agree within ~3 sd
        sd = np.sqrt((oracle.probability * (1 - oracle.probability)).sum())
        assert abs(labels.boolean_value.sum() - oracle.probability.sum()) < 3 * sd, task
        assert M.auroc(labels.boolean_value.values, oracle.probability.values) > 0.7
    assert 0 < readmission_probability(60, np.zeros(9, bool), 12.5, False, 1) < 0.2


def test_lifelong_labels_are_what_the_records_show(tmp_path):
    """Every discharge carries both labels (labels version 1 left the readmission stay before a
    drawn death unlabelled: which stays were scored depended on a draw no record shows); each
    readmission label says whether the record's next admission is within 30 days (version 1 said yes
    at some last stays that have none); on the 30-day readmission stays, where the doomed share π
    enters the risk, labels and risks agree; and the records are those of version 1, byte for byte."""
    from gptlab.ehr.synthetic import generate_cohort

    out = generate_cohort(tmp_path / "life", n_patients=3000, seed=2, shape="lifelong")
    tables = read_dataset(out, Problems())
    tasks = {t: pq.read_table(out / "tasks" / f"{t}.parquet").to_pandas().merge(
        pq.read_table(out / "tasks" / f"{t}_oracle.parquet").to_pandas(), on=["subject_id", "prediction_time"])
        for t in ("death_365d", "readmission_30d")}
    readmit_stay, discharges = set(), 0
    labelled = {t: set(zip(d.subject_id, d.prediction_time.values.astype("datetime64[us]"))) for t, d in tasks.items()}
    truth = dict(zip(zip(tasks["readmission_30d"].subject_id,
                         tasks["readmission_30d"].prediction_time.values.astype("datetime64[us]")),
                     tasks["readmission_30d"].boolean_value))
    for split in ("train", "tuning", "held_out"):
        for tl in iter_timelines(tables[split]):
            adm = [t for t, c in zip(tl.times, tl.codes) if c.startswith("HOSPITAL_ADMISSION")]
            dis = [t for t, c in zip(tl.times, tl.codes) if c.startswith("HOSPITAL_DISCHARGE")]
            for i, t in enumerate(dis):
                key = (tl.subject_id, t.astype("datetime64[us]"))
                discharges += 1
                assert all(key in labelled[task] for task in labelled), f"discharge {key} unlabelled"
                back = i + 1 < len(adm) and adm[i + 1] - t <= np.timedelta64(30, "D")
                assert truth[key] == back, f"readmission label {truth[key]} at {key}, record says {back}"
                if back:
                    readmit_stay.add((tl.subject_id, dis[i + 1].astype("datetime64[us]")))
    assert discharges == len(tasks["death_365d"]) == len(tasks["readmission_30d"])
    for task, d in tasks.items():
        on = d[[k in readmit_stay for k in zip(d.subject_id, d.prediction_time.values.astype("datetime64[us]"))]]
        sd = np.sqrt((on.probability * (1 - on.probability)).sum())
        assert len(on) > 300 and abs(on.boolean_value.sum() - on.probability.sum()) < 3 * sd, (task, len(on))

    # the records did not change with the labels: dataset_sha256 of labels version 1's cohort
    small = generate_cohort(tmp_path / "small", n_patients=200, seed=0, shape="lifelong")
    assert dataset_sha256(small) == "3688ffb223c62a7a9a18080cf5980b7a45fb9d1e9de81337265e9d115680d105"


def test_a_cohort_from_an_older_generator_is_regenerated(tmp_path, capsys):
    """A cached synthetic cohort whose dataset_version is not this generator's (labels version 1)
    is written again on first use: its labels must not be scored as this generator's."""
    from gptlab.ehr.prepare import meds_source

    cfg = {"path": str(tmp_path / "c"), "synthetic": {"n_patients": 30, "seed": 0, "horizon_days": 365, "shape": "lifelong"}}
    path = meds_source(cfg)
    meta = path / "metadata" / "dataset.json"
    labels = path / "tasks" / "death_365d.parquet"
    fresh = labels.read_bytes()
    meta.write_text(meta.read_text().replace("-labels2", ""))  # as labels version 1 wrote it
    labels.write_bytes(b"stale")
    capsys.readouterr()
    meds_source(cfg)
    assert "found version n30-seed0-h365d-lifelong, this generator writes" in capsys.readouterr().out
    assert labels.read_bytes() == fresh
    meds_source(cfg)  # up to date: left alone
    assert "generating" not in capsys.readouterr().out
