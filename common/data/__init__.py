"""The data layer: loaders, the patient x code matrix, the output writer, demo cohort, splits."""

from fedsynth.common.data.demo import demo_cohort
from fedsynth.common.data.loaders import FORMATS, detect_format, load_codes
from fedsynth.common.data.matrix import CodeMatrix, LoadReport
from fedsynth.common.data.split import split_holdout
from fedsynth.common.data.writer import synthetic_ids, write_matrix
from fedsynth.common.vocabulary import Vocabulary, icd9_categories, icd10_categories

__all__ = [
    "FORMATS",
    "CodeMatrix",
    "LoadReport",
    "Vocabulary",
    "demo_cohort",
    "detect_format",
    "icd9_categories",
    "icd10_categories",
    "load_codes",
    "split_holdout",
    "synthetic_ids",
    "write_matrix",
]
