from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("training", "0008_fill_question_keys_suffixing_older_repeats"),
    ]

    operations = [
        migrations.AddConstraint(
            model_name="completion",
            constraint=models.UniqueConstraint(fields=("job", "question_key"), name="completion_unique_job_question_key"),
        ),
    ]
