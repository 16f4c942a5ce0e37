"""The learned limit on model calls in flight (MASSCER_LLM_ADAPTIVE_CONCURRENCY, issue #17):
additive increase, multiplicative decrease, on real Redis (database 13) and, end to end, on
real workers against a fake model that takes only a few calls at once."""
from __future__ import annotations

import json
import logging
import math
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from masscer import endpoint
from masscer.lib import llm
from masscer.lib.concurrency import CallSlots, Learning, Outcome
from masscer.lib.llm.errors import status_error
from testing.processes import celery_worker, manage, wait_for
from training.tests.conftest import ready_document  # noqa: F401  (a fixture)

from .test_ratelimit import URL, client  # noqa: F401  (the Redis fixture)

OK, OVERLOADED, NEUTRAL = Outcome.OK, Outcome.OVERLOADED, Outcome.NEUTRAL


def learning_slots(connection: redis.Redis, *, start: float = 8, ceiling: int = 64) -> CallSlots:
    # Keys of their own per test, so runs that share this Redis database do not meet.
    key = f"test-learned:{uuid.uuid4().hex}"
    learning = Learning(index_key=key + ":index", start=start)
    return CallSlots(connection, key, ceiling, 30.0, learning, "fake-model")


def take_all(slots: CallSlots) -> list[str]:
    """Every slot free now, as a saturated workload takes them."""
    tokens = []
    while (token := slots.try_take()) is not None:
        tokens.append(token)
    return tokens


def run_saturated(slots: CallSlots, successes: int) -> None:
    """Calls that succeed while callers wait for every slot: each end is followed by new takes."""
    held = take_all(slots)
    for _ in range(successes):
        slots.give(held.pop(0), OK)
        held += take_all(slots)
    for token in held:
        slots.give(token)


# --- the rules, on real Redis -----------------------------------------------------------------


def test_it_starts_at_the_start_and_takes_that_many_slots(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=8)
    assert len(take_all(slots)) == 8
    assert slots.current_limit() == 8


def test_a_wave_of_429s_halves_the_limit_once(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=8)
    wave = take_all(slots)
    for token in wave:  # all eight sent at once, all refused
        slots.give(token, OVERLOADED)
    assert slots.learned() == 4.0
    assert len(take_all(slots)) == 4


def test_a_429_of_a_call_begun_after_the_cut_halves_it_again_down_to_the_floor(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=8)
    halvings = []
    for _ in range(5):
        token = slots.try_take()
        assert token is not None
        time.sleep(0.002)  # the next call begins after this cut (Redis TIME has microseconds)
        slots.give(token, OVERLOADED)
        halvings.append(slots.learned())
    assert halvings == [4.0, 2.0, 1.0, 1.0, 1.0]
    assert len(take_all(slots)) == 1  # the floor: calls go on, one at a time


def test_calls_sent_before_a_cut_do_not_undo_it(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=8)
    wave = take_all(slots)
    slots.give(wave[0], OVERLOADED)
    for token in wave[1:]:  # sent under the old limit: their successes say nothing of the new one
        slots.give(token, OK)
    assert slots.learned() == 4.0


def test_successes_at_full_use_add_about_one_per_limits_worth_of_calls(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=4)
    run_saturated(slots, 20)
    # +1/limit per success: limit² grows by about 2 per success (4² + 2·20 = 56).
    assert slots.learned() == pytest.approx(math.sqrt(56), abs=0.15)
    assert len(take_all(slots)) == 7


def test_successes_while_slots_stand_idle_do_not_raise_it(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=4)
    for _ in range(30):  # one caller at a time: nothing learned about four or more at once
        token = slots.try_take()
        assert token is not None
        slots.give(token, OK)
    assert slots.learned() == 4.0


def test_it_never_grows_above_the_ceiling(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=4, ceiling=5)
    run_saturated(slots, 40)
    assert slots.learned() == 5.0
    assert len(take_all(slots)) == 5


def test_a_call_that_says_nothing_moves_nothing(client) -> None:  # noqa: F811
    slots = learning_slots(client, start=4)
    wave = take_all(slots)
    for token in wave:
        slots.give(token, NEUTRAL)  # a 500, a timeout, a caller that gave up before calling
    assert slots.learned() == 4.0 and slots.held() == 0


def test_every_worker_sees_the_same_learned_limit(client) -> None:  # noqa: F811
    here = learning_slots(client, start=8)
    other_process = redis.Redis.from_url(URL)
    elsewhere = CallSlots(other_process, here.key, here.limit, here.lease_seconds, here.learning, "fake-model")
    token = here.try_take()
    assert token is not None
    here.give(token, OVERLOADED)
    assert elsewhere.current_limit() == 4
    assert len(take_all(elsewhere)) == 4


def test_a_fixed_limit_ignores_outcomes(client) -> None:  # noqa: F811
    fixed = CallSlots(client, f"test-fixed:{uuid.uuid4().hex}", 3, 30.0)
    for token in take_all(fixed):
        fixed.give(token, OVERLOADED)
    assert fixed.current_limit() == 3 and len(take_all(fixed)) == 3


def test_halving_is_logged_with_the_new_limit(client, caplog) -> None:  # noqa: F811
    slots = learning_slots(client, start=8)
    token = slots.try_take()
    assert token is not None
    with caplog.at_level(logging.WARNING, logger="masscer.lib.concurrency"):
        slots.give(token, OVERLOADED)
    assert "fake-model answered 429: its call limit is halved to 4.0" in caplog.text


# --- the settings and the doors ---------------------------------------------------------------


@pytest.fixture
def adaptive(settings: Any, fake_llm: Any) -> Any:
    """The product's call slots on real Redis (database 13), learned from a start of 8."""
    from training.tests.test_worker_integration import require_redis

    require_redis()
    redis.Redis.from_url(URL).flushdb()
    settings.MASSCER_RATELIMIT_REDIS_URL = URL
    settings.MASSCER_LLM_ADAPTIVE_CONCURRENCY = True
    settings.MASSCER_LLM_ADAPTIVE_START = 8
    settings.MASSCER_LLM_MAX_CONCURRENCY = 0
    return settings


def test_without_adaptive_the_slots_are_todays(adaptive) -> None:
    adaptive.MASSCER_LLM_ADAPTIVE_CONCURRENCY = False
    assert endpoint.call_slots("fake-model") is None  # no limit set: none, as before
    adaptive.MASSCER_LLM_MAX_CONCURRENCY = 16
    slots = endpoint.call_slots("fake-model")
    assert slots is not None and slots.learning is None and slots.limit == 16


def test_adaptive_learns_below_the_configured_limit_or_256(adaptive) -> None:
    slots = endpoint.call_slots("fake-model")
    assert slots is not None and slots.learning is not None
    assert (slots.limit, slots.learning.start, slots.current_limit()) == (256, 8, 8)
    adaptive.MASSCER_LLM_MAX_CONCURRENCY = 4
    slots = endpoint.call_slots("fake-model")
    assert slots is not None and (slots.limit, slots.current_limit()) == (4, 4)


def test_only_a_429_that_fewer_calls_would_avoid_is_a_decrease() -> None:
    config = llm.LLMConfig(base_url="http://127.0.0.1:9/v1", api_key="k", model="m")
    too_many = status_error(429, "", config, "m", retry_after=1.0)
    out_of_quota = status_error(429, "", config, "m", code="insufficient_quota")
    failed = status_error(500, "", config, "m")
    assert endpoint.call_outcome(None) is OK
    assert endpoint.call_outcome(too_many) is OVERLOADED
    assert endpoint.call_outcome(out_of_quota) is NEUTRAL
    assert endpoint.call_outcome(failed) is NEUTRAL


@pytest.mark.django_db
def test_a_429_in_pair_generation_halves_the_learned_limit(
    alice, agent, ready_document, fake_llm, adaptive  # noqa: F811
) -> None:
    from training.services import job_create
    from training.tests.test_generation import run_job

    fake_llm.script([{"kind": "http_error", "status": 429, "retry_after": 1}])
    job = job_create(owner=alice, count=2, agents=[agent], documents=[ready_document(alice, pages=1)])
    retries = run_job(job, rounds=1)
    assert len(retries) == 1
    slots = endpoint.call_slots("fake-model")
    assert slots is not None and slots.learned() == 4.0 and slots.held() == 0


@pytest.mark.parametrize(("start", "spares"), [(8, "every call"), (2, "the last two")])
def test_the_spare_pair_follows_the_learned_limit(
    alice, agent, ready_document, fake_llm, adaptive, start: int, spares: str  # noqa: F811
) -> None:
    """A job whose items all fit in the calls the endpoint takes at once is one wave: every
    call asks for a spare. With a learned limit, "at once" is what was learned, not the ceiling."""
    from training.models import WorkItem
    from training.services import job_create
    from training.tests.test_generation import run_job

    adaptive.MASSCER_LLM_ADAPTIVE_START = start
    job = job_create(owner=alice, count=13, agents=[agent], documents=[ready_document(alice, pages=8)])
    run_job(job)
    items = list(WorkItem.objects.filter(job=job).order_by("pk"))
    assert len(items) >= 4 and job.created_count == 13
    plus = [1] * len(items) if spares == "every call" else [0] * (len(items) - 2) + [1, 1]
    assert [call["requested_count"] for call in fake_llm.calls] == [
        item.quota + extra for item, extra in zip(items, plus, strict=True)
    ]


@pytest.mark.django_db
def test_a_429_in_a_playground_chat_halves_the_learned_limit(alice, agent, fake_llm, adaptive) -> None:
    from agents.tests.test_openai_ratelimit import chat

    fake_llm.script([{"kind": "http_error", "status": 429, "retry_after": 1}])
    assert chat(alice, agent).status_code == 429
    slots = endpoint.call_slots("fake-model")
    assert slots is not None and slots.learned() == 4.0 and slots.held() == 0


@pytest.mark.django_db
def test_the_metrics_show_each_models_learned_limit(fake_llm, adaptive) -> None:
    from masscer.metrics import exposition

    slots = endpoint.call_slots("fake-model")
    assert slots is not None
    token = slots.try_take()
    assert token is not None
    slots.give(token, OVERLOADED)
    assert 'masscer_model_concurrency_limit{model="fake-model"} 4.0' in exposition().decode()


# --- end to end: real workers, a provider that takes K calls at once ---------------------------

CAPACITY = 3  # the fake provider's calls at once; beyond them, 429 with Retry-After: 1
SECTIONS = 24  # one work item and one call each
PER_SECTION = 2


def handbook(tmp: Path) -> Path:
    from training.tests.conftest import prose

    sections = [f"# Section {n}\n\n{prose(2000 + n, 38)}" for n in range(SECTIONS)]
    path = tmp / "handbook.md"
    path.write_text("\n\n".join(sections))
    return path


def where_it_stood(fake: Any) -> str:
    """The job, its work items, the call slots and the fake's calls, when train does not finish."""
    from training.models import TrainingJob, WorkItem

    items = list(WorkItem.objects.values_list("pk", "status", "quota", "made", "calls", "reasons"))
    jobs = list(TrainingJob.objects.values_list("pk", "status", "created_count", "error"))
    slots = endpoint.call_slots("fake-model")
    held = (slots.held(), slots.learned()) if slots is not None else None
    statuses = [(call["status"], round(call["started"] % 1000, 2)) for call in fake.calls]
    return f"jobs {jobs}, items {items}, slots held and learned limit {held}, calls {statuses}"


def started_after(calls: list[dict[str, Any]], moment: float) -> list[dict[str, Any]]:
    return [call for call in calls if call["started"] > moment]


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_workers_learn_a_providers_concurrency_from_its_429s(fake_llm, tmp_path, settings) -> None:
    from training.models import Completion, TrainingJob
    from training.tests.test_worker_integration import fake_model_worker_env

    fake_llm.configure(capacity=CAPACITY, latency=0.3)
    env = fake_model_worker_env(
        fake_llm, tmp_path,
        MASSCER_LLM_ADAPTIVE_CONCURRENCY="true",
        MASSCER_LLM_MAX_CONCURRENCY="64",  # the ceiling, far above what the provider takes
        MASSCER_SPAN_MAX_TOKENS="800",  # one section per call
        MASSCER_JUDGE_DEFAULT="false",
    )
    settings.MASSCER_RATELIMIT_REDIS_URL = env["CELERY_BROKER_URL"]  # what the workers share
    settings.MASSCER_LLM_ADAPTIVE_CONCURRENCY = True
    settings.MASSCER_LLM_MAX_CONCURRENCY = 64
    log = tmp_path / "workers.log"
    with (
        celery_worker(env, queues="ingest", pool="prefork", concurrency=1, name="ingest", log_path=log),
        celery_worker(env, queues="llm", pool="threads", concurrency=16, name="llm", log_path=log),
    ):
        count = str(SECTIONS * PER_SECTION)
        try:
            result = manage("train", str(handbook(tmp_path)), "-n", count, "--agent", "support", "--json",
                            env=env, timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"train did not finish: {where_it_stood(fake_llm)}\nworker log:\n{log.read_text()[-6000:]}")
        assert result.returncode == 0, result.stderr + result.stdout + log.read_text()[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    job = TrainingJob.objects.get(pk=summary["job_id"])
    assert job.status == TrainingJob.Status.COMPLETED
    assert Completion.objects.filter(job=job).count() == SECTIONS * PER_SECTION

    calls = fake_llm.calls
    refused = [call for call in calls if call["status"] == 429]
    taken = [call for call in calls if call["status"] == 200]
    slots = endpoint.call_slots("fake-model")
    assert slots is not None
    learned = slots.learned()
    assert refused, "the first wave (8 at once) meets the provider's limit"
    # After the first wave (and its Retry-After) the workers send about as many calls as the
    # provider takes: a refusal now and then as the limit probes upwards, not a storm.
    after_first_wave = started_after(calls, min(call["ended"] for call in refused) + 1.0)
    refused_later = [call for call in after_first_wave if call["status"] == 429]
    figures = {"calls": len(calls), "taken": len(taken), "refused": len(refused), "learned": round(learned, 2),
               "after_first_wave": len(after_first_wave), "refused_later": len(refused_later)}
    print("ADAPTIVE", json.dumps(figures))
    assert len(refused_later) <= len(after_first_wave) / 4, figures
    assert 1 <= learned <= 2 * CAPACITY, figures
    assert wait_for(lambda: slots.held() == 0, timeout=5)  # every slot came back
