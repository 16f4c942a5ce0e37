"""Fill `Completion.question_key` on existing rows, so 0009 can make it unique per job.

Jobs made before the key may already hold the same question twice (two workers stored it at
the same moment). Nothing is deleted: in each job the first row with a question (lowest id)
gets the plain key, and each later repeat gets the key with "~<its id>" appended, which is
unique and still names the question it repeats (`validation.same_question`). Reviewers see
the repeats as before and can reject or edit them; new repeats can no longer be stored.

The key is computed here as `training.validation.question_key` computes it today (a copy, so
this migration means the same thing whatever that function becomes).
"""
import hashlib
import re
import unicodedata

from django.db import migrations

_SPACE = re.compile(r"\s+")
SUFFIX = "~"
BATCH = 500


def _key(question: str) -> str:
    normal = _SPACE.sub(" ", unicodedata.normalize("NFKC", question).casefold()).strip()
    return hashlib.sha256(normal.encode("utf-8")).hexdigest()


def fill_question_keys(apps, schema_editor):
    Completion = apps.get_model("training", "Completion")
    job_ids = Completion.objects.order_by().values_list("job_id", flat=True).distinct()
    for job_id in list(job_ids):
        # One job at a time (at most MASSCER_MAX_COMPLETIONS_PER_JOB rows), read before it is written.
        rows = list(Completion.objects.filter(job_id=job_id).order_by("pk").values_list("pk", "question"))
        seen: set[str] = set()
        changed = []
        for pk, question in rows:
            key = _key(question)
            if key in seen:
                key = f"{key}{SUFFIX}{pk}"
            seen.add(key)
            changed.append(Completion(pk=pk, question_key=key))
        Completion.objects.bulk_update(changed, ["question_key"], batch_size=BATCH)


class Migration(migrations.Migration):

    dependencies = [
        ("training", "0007_completion_question_key"),
    ]

    operations = [
        # Backwards there is nothing to undo: reversing 0007 drops the column.
        migrations.RunPython(fill_question_keys, migrations.RunPython.noop, elidable=False),
    ]
