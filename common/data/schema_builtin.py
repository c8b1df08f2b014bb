"""Built-in schemas, written from the sources' public data dictionaries (never from patients).

diabetes130: Strack et al. 2014 (BioMed Res. Int., Table 1), the UCI description (DOI
10.24432/C5230J) and its IDs_mapping.csv; '?' is a category wherever the source uses it for a
missing value. The dictionary names payer_code and medical_specialty without listing their codes
(it gives only "23" and "84 distinct values"): their lists are the labels of the public UCI
release. Numeric bounds are the documented ones (time_in_hospital 1-14); where the dictionary
gives none, a public, generous bound is chosen and the column's ``note`` says so.

MIMIC-III v1.4 / MIMIC-IV v2-3: the documented values of GENDER, ADMISSION_TYPE, INSURANCE,
ETHNICITY (III) / race (IV) and HOSPITAL_EXPIRE_FLAG; age in decade bands with '90+' (both
releases hide ages above 89); length of stay and number of admissions have no documented bound.
"""

from __future__ import annotations

from collections.abc import Callable

from fedsynth.common.data.schema import Column, Schema

DIABETES_MEDICATIONS = (
    "metformin", "repaglinide", "nateglinide", "chlorpropamide", "glimepiride", "acetohexamide",
    "glipizide", "glyburide", "tolbutamide", "pioglitazone", "rosiglitazone", "acarbose",
    "miglitol", "troglitazone", "tolazamide", "examide", "citoglipton", "insulin",
    "glyburide-metformin", "glipizide-metformin", "glimepiride-pioglitazone",
    "metformin-rosiglitazone", "metformin-pioglitazone",
)
_DECADES = tuple(f"[{a}-{a + 10})" for a in range(0, 100, 10))
_WEIGHTS = ("?", *(f"[{a}-{a + 25})" for a in range(0, 200, 25)), ">200")
_PAYERS = ("?", "BC", "CH", "CM", "CP", "DM", "FR", "HM", "MC", "MD", "MP", "OG", "OT", "PO",
           "SI", "SP", "UN", "WC")
_SPECIALTIES = (
    "?", "AllergyandImmunology", "Anesthesiology", "Anesthesiology-Pediatric", "Cardiology",
    "Cardiology-Pediatric", "DCPTEAM", "Dentistry", "Dermatology", "Emergency/Trauma",
    "Endocrinology", "Endocrinology-Metabolism", "Family/GeneralPractice", "Gastroenterology",
    "Gynecology", "Hematology", "Hematology/Oncology", "Hospitalist", "InfectiousDiseases",
    "InternalMedicine", "Nephrology", "Neurology", "Neurophysiology",
    "Obsterics&Gynecology-GynecologicOnco", "Obstetrics", "ObstetricsandGynecology", "Oncology",
    "Ophthalmology", "Orthopedics", "Orthopedics-Reconstructive", "Osteopath", "Otolaryngology",
    "OutreachServices", "Pathology", "Pediatrics", "Pediatrics-AllergyandImmunology",
    "Pediatrics-CriticalCare", "Pediatrics-EmergencyMedicine", "Pediatrics-Endocrinology",
    "Pediatrics-Hematology-Oncology", "Pediatrics-InfectiousDiseases", "Pediatrics-Neurology",
    "Pediatrics-Pulmonology", "Perinatology", "PhysicalMedicineandRehabilitation",
    "PhysicianNotFound", "Podiatry", "Proctology", "Psychiatry", "Psychiatry-Addictive",
    "Psychiatry-Child/Adolescent", "Psychology", "Pulmonology", "Radiologist", "Radiology",
    "Resident", "Rheumatology", "Speech", "SportsMedicine", "Surgeon", "Surgery-Cardiovascular",
    "Surgery-Cardiovascular/Thoracic", "Surgery-Colon&Rectal", "Surgery-General",
    "Surgery-Maxillofacial", "Surgery-Neuro", "Surgery-Pediatric", "Surgery-Plastic",
    "Surgery-PlasticwithinHeadandNeck", "Surgery-Thoracic", "Surgery-Vascular",
    "SurgicalSpecialty", "Urology",
)
_CHOSEN = "no documented bound: chosen public bound"
_YEAR_BEFORE = "visits in the year before the encounter: at most one a day (0-365)"


def _cat(name: str, cats: tuple[str, ...] | list[str], note: str = "",
         outcome: bool = False) -> Column:
    return Column(name, "categorical", tuple(cats), note=note, outcome=outcome)


def _ids(name: str, ids: list[int], note: str) -> Column:
    return _cat(name, [str(i) for i in ids], note)


def _count(name: str, low: int, high: int, note: str) -> Column:
    return Column(name, "integer", None, low, high, "log1p", note)


def diabetes130() -> Schema:
    """The 45 per-encounter columns of a patient's first encounter (codes are separate)."""
    cols = [
        _cat("race", ("Caucasian", "AfricanAmerican", "Asian", "Hispanic", "Other", "?")),
        _cat("gender", ("Female", "Male", "Unknown/Invalid")),
        _cat("age", _DECADES),
        _cat("weight", _WEIGHTS, "pounds, 25-lb bands"),
        _ids("admission_type_id", list(range(1, 9)), "IDs_mapping.csv: 1-8"),
        _ids("discharge_disposition_id", list(range(1, 31)), "IDs_mapping.csv: 1-30"),
        _ids("admission_source_id", [*range(1, 16), *range(17, 27)],
             "IDs_mapping.csv: 1-15, 17-26"),
        _count("time_in_hospital", 1, 14, "documented: stays of 1 to 14 days"),
        _cat("payer_code", _PAYERS, "codes of the public UCI release"),
        _cat("medical_specialty", _SPECIALTIES, "labels of the public UCI release"),
        _count("num_lab_procedures", 0, 200, f"{_CHOSEN} 0-200"),
        _count("num_procedures", 0, 50, f"{_CHOSEN} 0-50 (procedures other than lab tests)"),
        _count("num_medications", 0, 200, f"{_CHOSEN} 0-200 (distinct generic names)"),
        _count("number_outpatient", 0, 365, _YEAR_BEFORE),
        _count("number_emergency", 0, 365, _YEAR_BEFORE),
        _count("number_inpatient", 0, 365, _YEAR_BEFORE),
        _count("number_diagnoses", 0, 50, f"{_CHOSEN} 0-50 (diagnoses entered)"),
        _cat("max_glu_serum", (">200", ">300", "Norm", "None")),
        _cat("A1Cresult", (">7", ">8", "Norm", "None")),
        *(_cat(m, ("No", "Steady", "Up", "Down")) for m in DIABETES_MEDICATIONS),
        _cat("change", ("Ch", "No")),
        _cat("diabetesMed", ("Yes", "No")),
        _cat("readmitted", ("NO", ">30", "<30"), "the data set's stated outcome", outcome=True),
    ]
    return Schema("diabetes130", tuple(cols),
                  "UCI Diabetes 130-US hospitals 1999-2008 (Strack et al. 2014): first encounter")


MIMIC_AGE_BANDS = (*_DECADES[:9], "90+")
_MIMIC3_ETHNICITY = (
    "AMERICAN INDIAN/ALASKA NATIVE", "AMERICAN INDIAN/ALASKA NATIVE FEDERALLY RECOGNIZED TRIBE",
    "ASIAN", "ASIAN - ASIAN INDIAN", "ASIAN - CAMBODIAN", "ASIAN - CHINESE", "ASIAN - FILIPINO",
    "ASIAN - JAPANESE", "ASIAN - KOREAN", "ASIAN - OTHER", "ASIAN - THAI", "ASIAN - VIETNAMESE",
    "BLACK/AFRICAN", "BLACK/AFRICAN AMERICAN", "BLACK/CAPE VERDEAN", "BLACK/HAITIAN",
    "CARIBBEAN ISLAND", "HISPANIC OR LATINO", "HISPANIC/LATINO - CENTRAL AMERICAN (OTHER)",
    "HISPANIC/LATINO - COLOMBIAN", "HISPANIC/LATINO - CUBAN", "HISPANIC/LATINO - DOMINICAN",
    "HISPANIC/LATINO - GUATEMALAN", "HISPANIC/LATINO - HONDURAN", "HISPANIC/LATINO - MEXICAN",
    "HISPANIC/LATINO - PUERTO RICAN", "HISPANIC/LATINO - SALVADORAN", "MIDDLE EASTERN",
    "MULTI RACE ETHNICITY", "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", "OTHER",
    "PATIENT DECLINED TO ANSWER", "PORTUGUESE", "SOUTH AMERICAN", "UNABLE TO OBTAIN",
    "UNKNOWN/NOT SPECIFIED", "WHITE", "WHITE - BRAZILIAN", "WHITE - EASTERN EUROPEAN",
    "WHITE - OTHER EUROPEAN", "WHITE - RUSSIAN",
)
_MIMIC4_RACE = (
    "AMERICAN INDIAN/ALASKA NATIVE", "ASIAN", "ASIAN - ASIAN INDIAN", "ASIAN - CHINESE",
    "ASIAN - KOREAN", "ASIAN - SOUTH EAST ASIAN", "BLACK/AFRICAN", "BLACK/AFRICAN AMERICAN",
    "BLACK/CAPE VERDEAN", "BLACK/CARIBBEAN ISLAND", "HISPANIC OR LATINO",
    "HISPANIC/LATINO - CENTRAL AMERICAN", "HISPANIC/LATINO - COLUMBIAN",
    "HISPANIC/LATINO - CUBAN", "HISPANIC/LATINO - DOMINICAN", "HISPANIC/LATINO - GUATEMALAN",
    "HISPANIC/LATINO - HONDURAN", "HISPANIC/LATINO - MEXICAN", "HISPANIC/LATINO - PUERTO RICAN",
    "HISPANIC/LATINO - SALVADORAN", "MULTIPLE RACE/ETHNICITY",
    "NATIVE HAWAIIAN OR OTHER PACIFIC ISLANDER", "OTHER", "PATIENT DECLINED TO ANSWER",
    "PORTUGUESE", "SOUTH AMERICAN", "UNABLE TO OBTAIN", "UNKNOWN", "WHITE", "WHITE - BRAZILIAN",
    "WHITE - EASTERN EUROPEAN", "WHITE - OTHER EUROPEAN", "WHITE - RUSSIAN",
)
_MIMIC4_ADMISSION_TYPES = (
    "AMBULATORY OBSERVATION", "DIRECT EMER.", "DIRECT OBSERVATION", "ELECTIVE",
    "EU OBSERVATION", "EW EMER.", "OBSERVATION ADMIT", "SURGICAL SAME DAY ADMISSION", "URGENT",
)


def _mimic(name: str, race_col: str, races: tuple[str, ...], types: tuple[str, ...],
           insurance: tuple[str, ...], desc: str) -> Schema:
    cols = (
        _cat("gender", ("F", "M")),
        _cat("age", MIMIC_AGE_BANDS, "age at first admission; ages above 89 are hidden: 90+"),
        _cat(race_col, races, "first admission"),
        _cat("admission_type", types, "first admission"),
        _cat("insurance", insurance, "first admission"),
        Column("los_days", "real", None, 0.0, 730.0, "log1p",
               f"first admission, discharge - admission in days; {_CHOSEN} 0-730 (two years)"),
        _count("n_admissions", 1, 1000, f"{_CHOSEN} 1-1000"),
        _cat("hospital_expire_flag", ("0", "1"), "1 if the patient died in hospital",
             outcome=True),
    )
    return Schema(name, cols, desc)


def mimic3() -> Schema:
    return _mimic("mimic3", "ethnicity", _MIMIC3_ETHNICITY,
                  ("ELECTIVE", "EMERGENCY", "NEWBORN", "URGENT"),
                  ("Government", "Medicaid", "Medicare", "Private", "Self Pay"),
                  "MIMIC-III v1.4: PATIENTS and ADMISSIONS, one record per SUBJECT_ID")


def mimic4() -> Schema:
    return _mimic("mimic4", "race", _MIMIC4_RACE, _MIMIC4_ADMISSION_TYPES,
                  ("Medicaid", "Medicare", "No charge", "Other", "Private"),
                  "MIMIC-IV v2-3: hosp/patients and hosp/admissions, one record per subject_id")


BUILTIN: dict[str, Callable[[], Schema]] = {
    "diabetes130": diabetes130, "mimic3": mimic3, "mimic4": mimic4,
}
