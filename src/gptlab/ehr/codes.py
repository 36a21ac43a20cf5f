"""Medical code maps and hierarchies: ICD-9 → ICD-10-CM, ICD-10-CM chapter/category, ATC levels,
MIMIC drug names → ATC, and human-readable names for decoding.

The maps ship in `gptlab/assets/codes` (see its README for origins and licences); the ICD-10-CM
tree comes from the `simple-icd-10-cm` package (the `ehr` extra). Everything is loaded lazily and
once, so importing the tokenizer costs nothing until a code is actually looked up.
"""

from __future__ import annotations

import csv
import gzip
from functools import cache

from gptlab.paths import asset

CODES_DIR = asset("codes")
ATC_LEVELS = (1, 3, 4, 5, 7)  # anatomical group, therapeutic, pharmacological, chemical, substance


def _read_csv_gz(name: str) -> list[dict[str, str]]:
    path = CODES_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"code map {path} is missing: the package was installed without its assets")
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


@cache
def icd9_to_icd10_map() -> dict[str, str]:
    """ICD-9-CM (no dot) → the first ICD-10-CM target of the CMS GEMs (no dot); "no map" rows skipped."""
    out: dict[str, str] = {}
    for row in _read_csv_gz("icd_cm_9_to_10_mapping.csv.gz"):
        no_map = len(row["flags"]) > 1 and row["flags"][1] == "1"
        if not no_map and row["icd_10"] != "NoDx":
            out.setdefault(row["icd_9"], row["icd_10"])
    return out


@cache
def atc_names() -> dict[str, str]:
    return {row["atc_code"]: row["atc_name"] for row in _read_csv_gz("atc_coding.csv.gz")}


@cache
def drug_to_atc_map() -> dict[str, str]:
    """Drug name (lower-cased) → ATC code (7 characters)."""
    out: dict[str, str] = {}
    for row in _read_csv_gz("mimic_drug_to_atc.csv.gz"):
        out.setdefault(row["drug"].strip().lower(), row["atc_code"])
    return out


def icd9_to_icd10(code: str) -> str | None:
    return icd9_to_icd10_map().get(code.replace(".", ""))


def _cm():
    try:
        import simple_icd_10_cm
    except ImportError:
        raise ImportError(
            "ICD-10-CM hierarchy needs the simple-icd-10-cm package: pip install -e '.[ehr]'"
        ) from None
    return simple_icd_10_cm


@cache
def icd10_parts(code: str) -> tuple[str, ...] | None:
    """("chapter N", category, full code with dot) for a valid ICD-10-CM code (dot optional), the
    category once when the code is a category itself; None when the code is not ICD-10-CM."""
    cm = _cm()
    if not cm.is_valid_item(code) or cm.is_chapter_or_block(code):
        return None
    dotted = cm.add_dot(code)
    ancestors = cm.get_ancestors(dotted)
    chapter = ancestors[-1]
    category = next((a for a in [dotted, *ancestors] if cm.is_category(a)), None)
    if category is None:
        return None
    return (chapter, category) if dotted == category else (chapter, category, dotted)


def icd10_name(code: str) -> str | None:
    cm = _cm()
    return cm.get_description(code) if cm.is_valid_item(code) else None


def atc_parts(code: str, levels: tuple[int, ...] | list[int] = ATC_LEVELS) -> tuple[str, ...]:
    """The ATC code cut at each level length it reaches: C09AA02 → C, C09, C09A, C09AA, C09AA02."""
    return tuple(code[:n] for n in levels if n <= len(code))


def drug_to_atc(drug: str) -> str | None:
    return drug_to_atc_map().get(drug.strip().lower())
