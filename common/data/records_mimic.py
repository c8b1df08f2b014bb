"""MIMIC-III/IV patient records from the PATIENTS and ADMISSIONS tables beside the diagnoses.

One row per patient: gender, age band at the first admission, ethnicity (III) / race (IV), the
first admission's type, insurance and length of stay in days, the number of admissions and
whether the patient died in hospital. A malformed table raises ``InputError`` naming the file,
the column and the value; values a schema does not know are left to the schema check.

Dates: PhysioNet writes ``YYYY-MM-DD HH:MM:SS``; spreadsheet re-exports (the public demo mirror)
write ``M/D/YY H:MM``, which loses the century. Such years are read modulo 100: a patient's
admissions are put in order within the century window that keeps them closest (their span is
far below 50 years), stays and ages are taken modulo 100 years, and a birth date left before
1900 is MIMIC-III's shift for patients older than 89 (band ``90+``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from fedsynth.common.data.reading import check_full_rows, lower_map, read_header, read_table
from fedsynth.common.errors import InputError

log = logging.getLogger(__name__)

_FULL = r"^(\d{4})-(\d{1,2})-(\d{1,2})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d*)?)?)?$"
_SHORT = r"^(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})(?:\s+(\d{1,2}):(\d{2})(?::(\d{2}))?)?$"
_MISSING = {"", "nan", "nat", "null", "none", "na"}
HIDDEN_AGE = 300  # MIMIC-III: the DOB of a patient older than 89 is 300 years before admission


def find_beside(p: Path, stem: str) -> Path | None:
    """``stem``.csv(.gz) beside the diagnoses file, in any case (PATIENTS.csv, patients.csv.gz);
    a directory of that name is returned too, so that reading it fails naming it."""
    wanted = {f"{stem}.csv", f"{stem}.csv.gz"}
    found = [f for f in sorted(p.parent.iterdir()) if f.name.lower() in wanted]
    return next((f for f in found if f.is_file()), found[0] if found else None)


def mimic_table(p: Path) -> tuple[pd.DataFrame, str, dict[str, str], list[str]]:
    """(records indexed by subject id, 'mimic3'|'mimic4', column -> source file, notes)."""
    fp, fa = find_beside(p, "patients"), find_beside(p, "admissions")
    for f, stem in ((fp, "PATIENTS"), (fa, "ADMISSIONS")):
        if f is None:
            raise InputError(p, f"records need {stem}.csv beside the diagnoses file",
                             "Put PATIENTS and ADMISSIONS there, or load the codes only")
    adm_cols = lower_map(read_header(fa))
    version = "mimic4" if "race" in adm_cols else "mimic3"
    race = "race" if version == "mimic4" else "ethnicity"
    need = ["subject_id", "hadm_id", "admittime", "dischtime", "admission_type", "insurance",
            race, "hospital_expire_flag"]
    adm = _columns(fa, adm_cols, need)
    pat_need = ["subject_id", "gender"] + (["anchor_age", "anchor_year"] if version == "mimic4"
                                           else ["dob"])
    pat = _columns(fp, lower_map(read_header(fp)), pat_need)
    notes: list[str] = []
    adm["subject_id"] = _ids(adm["subject_id"], fa, adm_cols["subject_id"])
    adm["hadm_id"] = _ids(adm["hadm_id"], fa, adm_cols["hadm_id"])
    twice = adm["hadm_id"].duplicated(keep=False).to_numpy()
    if twice.any():
        i, j = np.flatnonzero(adm["hadm_id"].to_numpy() == adm["hadm_id"][twice].iloc[0])[:2]
        raise InputError(fa, f"column {adm_cols['hadm_id']!r}: admission "
                         f"{adm['hadm_id'].iloc[i]!r} is in data rows {i + 1} and {j + 1}",
                         "Each admission has one row")
    notes += _unknown_admissions(p, adm, fa)
    admit = _dates(adm["admittime"], fa, adm_cols["admittime"], allow_missing=False)
    disch = _dates(adm["dischtime"], fa, adm_cols["dischtime"], allow_missing=True)
    short = admit["short"] | disch["short"].fillna(False)
    if short.any():
        notes.append(f"{fa.name}: {int(short.sum())} admissions dated with 2-digit years (read "
                     "modulo 100)")
    year = _unwrap(admit, adm["subject_id"])
    start = _stamp(year, admit)
    delta = disch["year"] - admit["year"]
    delta = delta.where(~short, delta % 100)
    stop = _stamp(year + delta, disch)
    adm["_start"], adm["_los"] = start, (stop - start).dt.total_seconds() / 86400.0
    adm = adm.assign(_hadm=adm["hadm_id"].str.strip()).sort_values(
        ["subject_id", "_start", "_hadm"], kind="stable")
    first = adm.drop_duplicates("subject_id").set_index("subject_id")
    first_year = year.loc[first["_row"].to_numpy()].to_numpy()
    first_admit = admit.loc[first["_row"].to_numpy()]
    out = pd.DataFrame(index=first.index)
    pat["subject_id"] = _ids(pat["subject_id"], fp, lower_map(read_header(fp))["subject_id"])
    if pat["subject_id"].duplicated().any():
        notes.append(f"{fp.name}: {int(pat['subject_id'].duplicated().sum())} repeated "
                     "patients, first row kept")
    pat = pat.drop_duplicates("subject_id").set_index("subject_id")
    absent = int((~out.index.isin(pat.index)).sum())
    if absent:
        first_absent = out.index[~out.index.isin(pat.index)][0]
        notes.append(_warn(f"{fa.name}: {absent} patients (first: SUBJECT_ID {first_absent!r}) "
                           f"have no row in {fp.name}: their gender and age are missing"))
    pat = pat.reindex(out.index)
    out["gender"] = pat["gender"].str.strip()
    if version == "mimic4":
        anchor_age = _ints(pat["anchor_age"], fp, "anchor_age")
        anchor_year = _ints(pat["anchor_year"], fp, "anchor_year")
        ages = anchor_age + (first_year - anchor_year)
    else:
        ages = _age(first_year, first_admit, pat["dob"], fp)
    out["age"] = [age_band(a) for a in ages]
    out[race] = first[race].str.strip()
    out["admission_type"] = first["admission_type"].str.strip()
    out["insurance"] = first["insurance"].str.strip()
    out["los_days"] = first["_los"].astype("float64")
    out["n_admissions"] = adm.groupby("subject_id")["_hadm"].nunique().reindex(out.index)
    out["hospital_expire_flag"] = _died(adm).reindex(out.index)
    src = {c: str(fa) for c in out.columns}
    src.update(gender=str(fp), age=f"{fp} + {fa.name}")  # named PATIENTS.csv + ADMISSIONS.csv
    return out, version, src, notes


def age_band(age: float) -> object:
    """Decade band '[70-80)'; '90+' above 89; a negative age stays a number (reported)."""
    if age is None or pd.isna(age):
        return pd.NA
    a = int(age)
    if a < 0:
        return str(a)
    return "90+" if a >= 90 else f"[{a // 10 * 10}-{a // 10 * 10 + 10})"


def _columns(f: Path, low: dict[str, str], need: list[str]) -> pd.DataFrame:
    for n in need:
        if n not in low:
            raise InputError(f, f"column {n.upper()!r} not found (columns: "
                             f"{', '.join(list(low.values())[:12])})")
    df = read_table(f, usecols=[low[n] for n in need])
    df.columns = need
    if df.empty:
        raise InputError(f, "no rows (the file has a header but no rows)")
    check_full_rows(f, df)
    return df.assign(_row=np.arange(len(df)))


def _ids(s: pd.Series, f: Path, col: str) -> pd.Series:
    """MIMIC's SUBJECT_ID and HADM_ID are whole numbers: anything else ('inf', '-3', '1e400',
    'x1') is a damaged table, refused naming the file, the column, the value and the row."""
    ids = s.astype(str).str.strip()
    if ids.str.lower().isin(_MISSING).any():
        i = int(np.flatnonzero(ids.str.lower().isin(_MISSING).to_numpy())[0])
        raise InputError(f, f"column {col!r}: empty id (data row {i + 1})")
    bad = ~ids.str.fullmatch(r"\d{1,18}").to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f, f"column {col!r}: value {ids.iloc[i][:60]!r} (data row {i + 1}) is "
                         "not a whole number", "MIMIC ids are positive integers")
    return ids


def _warn(note: str) -> str:
    log.warning("%s", note)
    return note


def _unknown_admissions(p: Path, adm: pd.DataFrame, fa: Path) -> list[str]:
    """A diagnosis row whose (SUBJECT_ID, HADM_ID) is in no admission: its codes stay the
    patient's, but the admission is not counted; said in a warning, never silently."""
    low = lower_map(read_header(p))
    if "hadm_id" not in low or "subject_id" not in low:
        return []
    d = read_table(p, usecols=[low["subject_id"], low["hadm_id"]])
    sid, hadm = (d[low[c]].astype(str).str.strip() for c in ("subject_id", "hadm_id"))
    keys = pd.MultiIndex.from_arrays([sid, hadm])
    known = pd.MultiIndex.from_arrays([adm["subject_id"], adm["hadm_id"]])
    lost = ~keys.isin(known) & ~hadm.str.lower().isin(_MISSING).to_numpy()
    if not lost.any():
        return []
    i = int(np.flatnonzero(lost)[0])
    return [_warn(f"{p.name}: {int(lost.sum())} diagnosis rows name an admission that is not in "
                  f"{fa.name} (first: data row {i + 1}, SUBJECT_ID {sid.iloc[i][:40]!r} HADM_ID "
                  f"{hadm.iloc[i][:40]!r}); their codes are kept")]


def _ints(s: pd.Series, f: Path, col: str) -> pd.Series:
    v = pd.to_numeric(s.str.strip(), errors="coerce")
    bad = s.notna() & (v.isna() | (v != v.round()) | (v.abs() > 10_000))
    if bad.any():
        raise InputError(f, f"column {col!r}: value {s[bad].iloc[0][:60]!r} is not a whole number")
    return v


def _dates(s: pd.Series, f: Path, col: str, allow_missing: bool) -> pd.DataFrame:
    """Date parts (year, month, day, hour, minute, second) and whether the year had 2 digits."""
    text = s.astype(str).str.strip()
    missing = text.str.lower().isin(_MISSING)
    full, short = text.str.extract(_FULL), text.str.extract(_SHORT)
    is_short = short[0].notna() & (short[2].str.len() == 2)
    parts = pd.DataFrame({
        "year": full[0].fillna(short[2]), "month": full[1].fillna(short[0]),
        "day": full[2].fillna(short[1]), "hour": full[3].fillna(short[3]),
        "minute": full[4].fillna(short[4]), "second": full[5].fillna(short[5]),
    }).fillna("0").astype("int64")
    parts["year"] = parts["year"].where(~is_short, parts["year"] + 2000)
    ok = pd.to_datetime(parts, errors="coerce").notna() & (full[0].notna() | short[0].notna())
    bad = ~ok & ~missing if allow_missing else ~ok
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f, f"column {col!r}: cannot read date {text.iloc[i][:60]!r} "
                         f"(data row {i + 1})", "Expected YYYY-MM-DD HH:MM:SS")
    parts["short"] = is_short
    return parts.where(~missing) if allow_missing else parts


def _unwrap(admit: pd.DataFrame, sid: pd.Series) -> pd.Series:
    """Admission years; a patient's 2-digit years that straddle a century go into one window."""
    year = admit["year"].copy()
    yy = year.where(admit["short"])
    span = yy.groupby(sid).transform("max") - yy.groupby(sid).transform("min")
    return year.where(~(admit["short"] & (span > 50) & (yy >= 2050)), year - 100)


def _stamp(year: pd.Series, parts: pd.DataFrame) -> pd.Series:
    cols = parts[["month", "day", "hour", "minute", "second"]].assign(year=year)
    return pd.to_datetime(cols[["year", "month", "day", "hour", "minute", "second"]],
                          errors="coerce")


def _age(first_year: np.ndarray, admit: pd.DataFrame, dob_text: pd.Series, fp: Path) -> list:
    """Whole years from DOB to the first admission (modulo 100 where a year had 2 digits)."""
    known = dob_text.notna().to_numpy()
    dob = _dates(dob_text.fillna(""), fp, "DOB", allow_missing=True)
    before = (admit["month"].to_numpy() * 100 + admit["day"].to_numpy()
              < dob["month"].to_numpy() * 100 + dob["day"].to_numpy())
    dob_year = dob["year"].to_numpy(dtype=float)
    dob_short = dob["short"].fillna(False).to_numpy(dtype=bool)
    age = first_year - dob_year - before
    short = admit["short"].to_numpy(dtype=bool) | dob_short
    hidden = short & ~dob_short & (dob_year < 1900)  # MIMIC-III's shift, left in full
    age = np.where(hidden, HIDDEN_AGE, np.where(short, np.mod(age, 100), age))
    return [a if k and not pd.isna(a) else None for a, k in zip(age, known, strict=True)]


def _died(adm: pd.DataFrame) -> pd.Series:
    """'1' if any admission ended in death, '0' if none; any other value is passed on."""
    flag = adm["hospital_expire_flag"].astype(str).str.strip()
    flag = flag.where(~flag.isin(["1.0", "0.0"]), flag.str[0])
    sid = adm["subject_id"]
    other = ~flag.isin(["0", "1"])
    out = (flag == "1").groupby(sid).any().map({True: "1", False: "0"})
    bad = flag[other].groupby(sid[other]).first()
    out.loc[bad.index] = bad
    return out
