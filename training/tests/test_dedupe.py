"""Near-duplicate detection: MinHash + LSH finds paraphrases, flags them, keep-one and merge resolve them."""
from __future__ import annotations

import random

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from testing.members import add_member
from training import dedupe
from training.models import Assignment, Completion
from training.review import duplicates_flag, duplicates_keep_one
from workspaces.services import workspace_personal

from .factories import make_agent, make_chunk, make_completions, make_document, make_job, numbered

ORIGINAL = (
    "How long does a customer have to ask for a refund after buying the battery charger?",
    "Customers can ask for a full refund within thirty days of purchase, with the receipt and original box.",
)
# One word changed in the question, punctuation and case in the answer.
PARAPHRASE = (
    "How long does a customer have to request a refund after buying the battery charger?",
    "customers can ask for a FULL refund within thirty days of purchase, with the receipt and original box!",
)
UNRELATED = (
    "Which firmware update fixes the router's dropped signal?",
    "Version 2.4 of the firmware restores the antenna calibration and fixes dropped signals.",
)


def test_normalisation_ignores_case_punctuation_and_spacing() -> None:
    a = dedupe.features("What is  the REFUND policy?", "Thirty days.")
    b = dedupe.features("what is the refund policy", "thirty   days")
    assert a == b


def test_signatures_are_deterministic_and_estimate_jaccard() -> None:
    a, b = dedupe.features(*ORIGINAL), dedupe.features(*PARAPHRASE)
    sig_a, sig_b = dedupe.signature(a), dedupe.signature(b)
    assert sig_a == dedupe.signature(set(a)) and len(sig_a) == dedupe.NUM_PERM
    estimate = sum(x == y for x, y in zip(sig_a, sig_b, strict=True)) / dedupe.NUM_PERM
    assert abs(estimate - dedupe.jaccard(a, b)) < 0.15


def test_it_groups_paraphrases_and_leaves_distinct_pairs_alone() -> None:
    items = [(1, *ORIGINAL), (2, *UNRELATED), (3, *PARAPHRASE)] + [
        (10 + n, q, a) for n, (q, a) in enumerate(numbered(300))
    ]
    random.Random(5).shuffle(items)
    assert dedupe.near_duplicate_groups(items) == [[1, 3]]


def test_the_threshold_decides() -> None:
    items = [(1, *ORIGINAL), (2, *PARAPHRASE)]
    similarity = dedupe.jaccard(dedupe.features(*ORIGINAL), dedupe.features(*PARAPHRASE))
    assert dedupe.near_duplicate_groups(items, threshold=similarity) == [[1, 2]]
    assert dedupe.near_duplicate_groups(items, threshold=min(1.0, similarity + 0.01)) == []


def test_groups_are_transitive() -> None:
    words = [f"word{n}" for n in range(15)]
    a = " ".join(words)
    b = " ".join([*words[:-1], "other1"])
    c = " ".join([*words[:-2], "other1", "other2"])
    groups = dedupe.near_duplicate_groups([(1, a, a), (2, b, b), (3, c, c)], threshold=0.7)
    assert groups == [[1, 2, 3]]


def test_a_bucket_of_many_identical_items_stays_linear() -> None:
    items = [(n, *ORIGINAL) for n in range(1, 1001)]
    assert dedupe.near_duplicate_groups(items) == [list(range(1, 1001))]


# --- the services ------------------------------------------------------------------------


@pytest.fixture
def material(alice, bob):
    """Alice's agent with an approved original, a pending paraphrase, an unrelated pair and filler."""
    workspace = workspace_personal(user=alice)
    add_member(actor=alice, workspace=workspace, user=bob, role="member")
    agent = make_agent(alice)
    other_agent = make_agent(alice, slug="sales")
    job = make_job(alice)
    chunk = make_chunk(make_document(alice))
    original = make_completions(job, chunk, [ORIGINAL], agents=[agent], status="approved")[0]
    paraphrase = make_completions(job, chunk, [PARAPHRASE], agents=[agent, other_agent])[0]
    unrelated = make_completions(job, chunk, [UNRELATED], agents=[agent])[0]
    make_completions(job, chunk, numbered(20), agents=[agent])
    return {"agent": agent, "other": other_agent, "original": original, "paraphrase": paraphrase,
            "unrelated": unrelated}


@pytest.mark.django_db
def test_flagging_points_duplicates_at_the_approved_one(material) -> None:
    groups = duplicates_flag(actor=material["agent"].owner, agent=material["agent"])
    assert groups == [[material["original"].pk, material["paraphrase"].pk]]
    paraphrase = Completion.objects.get(pk=material["paraphrase"].pk)
    assert paraphrase.duplicate_of_id == material["original"].pk
    assert Completion.objects.filter(duplicate_of__isnull=False).count() == 1


@pytest.mark.django_db
def test_rejected_completions_are_not_material(material) -> None:
    Completion.objects.filter(pk=material["original"].pk).update(status="rejected")
    assert duplicates_flag(actor=material["agent"].owner, agent=material["agent"]) == []


@pytest.mark.django_db
def test_flagging_again_recomputes(material) -> None:
    duplicates_flag(actor=material["agent"].owner, agent=material["agent"])
    Completion.objects.filter(pk=material["paraphrase"].pk).update(question=UNRELATED[0] + " Really?")
    assert duplicates_flag(actor=material["agent"].owner, agent=material["agent"]) == []
    assert not Completion.objects.filter(duplicate_of__isnull=False).exists()


@pytest.mark.django_db
def test_keep_one_rejects_the_rest_of_the_group(alice, material) -> None:
    duplicates_flag(actor=material["agent"].owner, agent=material["agent"])
    outcome = duplicates_keep_one(keep=material["paraphrase"], reviewer=alice)
    assert outcome.done == 1
    original = Completion.objects.get(pk=material["original"].pk)
    kept = Completion.objects.get(pk=material["paraphrase"].pk)
    assert original.status == "rejected" and original.reviewed_by == alice and original.duplicate_of == kept
    assert kept.duplicate_of is None and kept.status == "pending"
    # keep-one leaves the agents as they were
    assert set(Assignment.objects.filter(completion=original).values_list("agent_id", flat=True)) == {
        material["agent"].pk
    }


@pytest.mark.django_db
def test_merge_moves_the_agents_to_the_kept_one(alice, material) -> None:
    duplicates_flag(actor=material["agent"].owner, agent=material["agent"])
    duplicates_keep_one(keep=material["original"], reviewer=alice, merge=True)
    kept_agents = set(Assignment.objects.filter(completion=material["original"]).values_list("agent_id", flat=True))
    assert kept_agents == {material["agent"].pk, material["other"].pk}
    assert not Assignment.objects.filter(completion=material["paraphrase"]).exists()
    assert Completion.objects.get(pk=material["paraphrase"].pk).status == "rejected"


@pytest.mark.django_db
def test_only_reviewers_resolve_duplicates(bob, material) -> None:
    duplicates_flag(actor=material["agent"].owner, agent=material["agent"])
    with pytest.raises(PermissionDenied):
        duplicates_keep_one(keep=material["original"], reviewer=bob)
    assert Completion.objects.get(pk=material["paraphrase"].pk).status == "pending"


@pytest.mark.django_db
def test_keeping_an_unflagged_completion_is_refused(alice, material) -> None:
    with pytest.raises(ValidationError):
        duplicates_keep_one(keep=material["unrelated"], reviewer=alice)
