"""The embedded demo cohort (deterministic, realistic, sites differ) and the holdout split."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.data import demo_cohort, split_holdout
from fedsynth.common.data.demo import CLUSTERS, TAIL, site_names


@pytest.fixture(scope="module")
def cohort():
    return demo_cohort(n_sites=3, patients_per_site=1500, seed=0)


def test_deterministic_for_a_seed(cohort):
    again = demo_cohort(n_sites=3, patients_per_site=1500, seed=0)
    np.testing.assert_array_equal(again.X, cohort.X)
    assert again.covariates.equals(cohort.covariates)
    other = demo_cohort(n_sites=3, patients_per_site=1500, seed=1)
    assert not np.array_equal(other.X, cohort.X)


def test_shape_covariates_and_vocabulary(cohort):
    assert cohort.X.shape == (4500, 2090) and cohort.X.dtype == np.uint8
    assert list(cohort.covariates.columns) == ["site", "age_band", "gender"]
    assert cohort.covariates["site"].value_counts().to_dict() == {"A": 1500, "B": 1500, "C": 1500}
    assert set(cohort.covariates["gender"]) == {"Female", "Male"}
    assert len(set(cohort.patient_ids)) == 4500
    every_code = {c for cl in CLUSTERS.values() for c in cl} | set(TAIL)
    assert all(c in cohort.vocab for c in every_code)  # real ICD-9 categories only


def test_realistic_codes_per_patient(cohort):
    cpp = cohort.codes_per_patient()
    assert cpp.min() >= 1
    assert 3.0 <= cpp.mean() <= 5.0
    assert len(cohort.used_codes()) > 150  # a long tail, not just the clusters


def test_comorbidity_clusters_co_occur(cohort):
    v = cohort.vocab
    codes = ("250", "401", "038", "995")
    dm, htn, sep, sirs = (cohort.X[:, v.index(c)].astype(bool) for c in codes)
    assert htn[dm].mean() > 2 * htn[~dm].mean()
    assert sirs[sep].mean() > 5 * sirs[~sep].mean()


def test_sites_differ_in_case_mix(cohort):
    sites = cohort.split_by("site")
    v = cohort.vocab

    def prev(site, code):
        return sites[site].X[:, v.index(code)].mean()

    assert prev("A", "414") > 3 * prev("C", "414")  # the cardiac centre
    assert prev("C", "296") > 3 * prev("A", "296")  # the psychiatric/community service
    assert prev("B", "V27") > prev("A", "V27")  # the general hospital has a maternity ward
    pa, pc = sites["A"].prevalence(), sites["C"].prevalence()
    assert np.abs(pa - pc).sum() > 1.0


def test_pregnancy_codes_only_for_women(cohort):
    v27 = cohort.X[:, cohort.vocab.index("V27")].astype(bool)
    assert v27.sum() > 10
    assert (cohort.covariates["gender"][v27] == "Female").all()


def test_more_sites_all_distinct():
    m = demo_cohort(n_sites=5, patients_per_site=300, seed=2)
    parts = m.split_by("site")
    assert list(parts) == ["A", "B", "C", "D", "E"]
    assert site_names(28)[-2:] == ["AA", "AB"]
    assert not np.allclose(parts["A"].prevalence(), parts["D"].prevalence())


def test_split_holdout_deterministic_disjoint(cohort):
    train, hold = split_holdout(cohort, fraction=0.2, seed=0)
    assert hold.n_patients == 900 and train.n_patients == 3600
    assert not set(train.patient_ids) & set(hold.patient_ids)
    assert set(train.patient_ids) | set(hold.patient_ids) == set(cohort.patient_ids)
    t2, h2 = split_holdout(cohort, fraction=0.2, seed=0)
    assert list(h2.patient_ids) == list(hold.patient_ids)
    _, h3 = split_holdout(cohort, fraction=0.2, seed=1)
    assert list(h3.patient_ids) != list(hold.patient_ids)
    # rows, covariates and ids stay aligned
    i = list(cohort.patient_ids).index(hold.patient_ids[0])
    np.testing.assert_array_equal(hold.X[0], cohort.X[i])
    assert hold.covariates.iloc[0].to_dict() == cohort.covariates.iloc[i].to_dict()
    with pytest.raises(ValueError):
        split_holdout(cohort, fraction=1.0)


def test_subset_and_codes_per_patient(cohort):
    sub = cohort.subset([0, 2])
    assert sub.n_patients == 2
    np.testing.assert_array_equal(sub.codes_per_patient(), cohort.X[[0, 2]].sum(axis=1))
