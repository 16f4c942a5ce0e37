from django.db import migrations

import training.models


class Migration(migrations.Migration):
    """The column first (empty on existing rows); 0008 fills it and 0009 makes it unique per job."""

    dependencies = [
        ("training", "0006_workitem_samples"),
    ]

    operations = [
        migrations.AddField(
            model_name="completion",
            name="question_key",
            field=training.models.QuestionKeyField(default="", editable=False, max_length=96),
            preserve_default=False,
        ),
    ]
