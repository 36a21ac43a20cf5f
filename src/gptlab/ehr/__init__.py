"""Patient timelines as language: MEDS in, EHR tokens, a GPT over patients, risk by trajectory sampling.

meds (reading + validation) → tokenizer (EHRTokenizer) → prepare (bins + patient index) → train.py →
risk (trajectory sampling) → metrics (AUROC/AUPRC, CIs, calibration) → evaluate (ehr_eval.py report).
synthetic writes a cohort with a known risk function: the test bed and the oracle.
"""
