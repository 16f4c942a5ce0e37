#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""
from __future__ import annotations

import gc
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "masscer.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 - loads the settings, which check themselves
    except ImproperlyConfigured as exc:
        # Said plainly, for every command (some would otherwise fail later, on something else).
        sys.exit(f"manage.py: {exc}")
    try:
        execute_from_command_line(sys.argv)
    finally:
        # Everything the command loaded is left as it is at exit (the interpreter frees it):
        # skipping the collector's last passes over Django, openai and co. takes the exit
        # from ~0.17 s to ~0.02 s, which `train` and every scripted command wait for.
        gc.freeze()


if __name__ == "__main__":
    main()
