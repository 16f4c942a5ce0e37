"""Test support: fake model server, processes, the pytest environment. Not part of the product."""
